"""The one Temporal client factory used by the API, the worker, the CLI and the tests."""

import dataclasses
from collections.abc import Sequence

from temporalio.client import Client, Interceptor
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes
from temporalio.envconfig import ClientConfigProfile
from temporalio.runtime import Runtime

from core.encryption import encryption_codec
from core.settings import Settings


def data_converter(settings: Settings | None) -> DataConverter:
    """The pydantic data converter for Keel's payload models; with encryption on
    (KEEL_ENCRYPTION_KEYS), payloads and failure messages are encrypted as well."""
    codec = encryption_codec(settings) if settings is not None else None
    if codec is None:
        return pydantic_data_converter
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=codec,
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


async def connect_temporal(
    address: str | None = None,
    namespace: str | None = None,
    *,
    settings: Settings | None = None,
    runtime: Runtime | None = None,
    interceptors: Sequence[Interceptor] = (),
) -> Client:
    """Connect with Temporal's standard client configuration (`TEMPORAL_ADDRESS`,
    `TEMPORAL_NAMESPACE`, `TEMPORAL_API_KEY`, TLS, profiles in the config file), then the
    explicit overrides, using Keel's data converter (encrypting when `settings` say so).
    `runtime` (metrics) and `interceptors` (tracing) apply to workers built on the client."""
    config = ClientConfigProfile.load().to_client_connect_config()
    if address is not None:
        config["target_host"] = address
    if namespace is not None:
        config["namespace"] = namespace
    config.setdefault("target_host", "127.0.0.1:7233")
    return await Client.connect(
        **config,
        data_converter=data_converter(settings),
        runtime=runtime,
        interceptors=interceptors,
    )

"""The one Temporal client factory used by the API, the worker, the CLI and the tests."""

from collections.abc import Sequence

from temporalio.client import Client, Interceptor
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.envconfig import ClientConfigProfile
from temporalio.runtime import Runtime


async def connect_temporal(
    address: str | None = None,
    namespace: str | None = None,
    runtime: Runtime | None = None,
    interceptors: Sequence[Interceptor] = (),
) -> Client:
    """Connect with Temporal's standard client configuration (`TEMPORAL_ADDRESS`,
    `TEMPORAL_NAMESPACE`, `TEMPORAL_API_KEY`, TLS, profiles in the config file), then the
    explicit overrides, using the pydantic data converter for Keel's payload models.
    `runtime` (metrics) and `interceptors` (tracing) apply to workers built on the client."""
    config = ClientConfigProfile.load().to_client_connect_config()
    if address is not None:
        config["target_host"] = address
    if namespace is not None:
        config["namespace"] = namespace
    config.setdefault("target_host", "127.0.0.1:7233")
    return await Client.connect(
        **config,
        data_converter=pydantic_data_converter,
        runtime=runtime,
        interceptors=interceptors,
    )

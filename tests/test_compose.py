"""Consistency checks of the deployment files: docker-compose.temporal.yml, the Dockerfile
and .dockerignore. They parse the files only: no Docker engine, no network."""

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.temporal.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

KEEL_SUBCOMMANDS = {"worker", "api", "migrate", "telegram"}
SEARCH_ATTRIBUTES = ("KeelUserId", "KeelChannel", "KeelAgent", "KeelPhase")
SECRET_VARIABLES = (
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_BASE_URL",
    "KEEL_TELEGRAM_BOT_TOKEN",
    "KEEL_TELEGRAM_WEBHOOK_SECRET",
    "KEEL_ENCRYPTION_KEYS",
)
ENCRYPTION_VARIABLES = ("KEEL_ENCRYPTION_KEYS", "KEEL_ENCRYPTION_KEY_ID")
ONE_SHOT_RESTARTS = {None, "no", "on-failure"}


# --- helpers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def environment(service: dict[str, Any]) -> dict[str, str | None]:
    """A service's environment as a mapping, from either the list or the mapping form."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) if "=" in item else (item, None) for item in env)
        return dict(pairs)
    return {name: None if value is None else str(value) for name, value in env.items()}


def dependencies(service: dict[str, Any]) -> dict[str, str]:
    """A service's `depends_on` as {target: condition}, from either form."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def command_words(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(word) for word in command]


def build_of(service: dict[str, Any]) -> tuple[str, str] | None:
    """(context, dockerfile) of a service that is built, else None."""
    build = service.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        return build, "Dockerfile"
    return build.get("context", "."), build.get("dockerfile", "Dockerfile")


def keel_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in services.items() if build_of(svc) is not None}


def image_service(services: dict[str, dict[str, Any]], repository: str) -> str:
    """The one service running an image of `repository`."""
    names = [
        name
        for name, svc in services.items()
        if str(svc.get("image", "")).rsplit(":", 1)[0] == repository
    ]
    assert len(names) == 1, f"expected one service with image {repository}, found {names}"
    return names[0]


def temporal_service(services: dict[str, dict[str, Any]]) -> str:
    names = [
        name
        for name, svc in services.items()
        if str(svc.get("image", "")).startswith(("temporalio/auto-setup:", "temporalio/server:"))
    ]
    assert len(names) == 1, f"expected one Temporal server service, found {names}"
    return names[0]


def parse_port(spec: Any) -> tuple[str, int | None, int, str]:
    """(host ip, published port or None, container port, protocol) of one `ports` entry."""
    if isinstance(spec, dict):
        published = spec.get("published")
        return (
            str(spec.get("host_ip", "")),
            int(published) if published is not None else None,
            int(spec["target"]),
            spec.get("protocol", "tcp"),
        )
    text, _, protocol = str(spec).partition("/")
    parts = text.rsplit(":", 2)
    container = int(parts[-1])
    published = int(parts[-2]) if len(parts) >= 2 and parts[-2] else None
    host_ip = parts[0] if len(parts) == 3 else ""
    return host_ip, published, container, protocol or "tcp"


def published_ports(service: dict[str, Any]) -> list[tuple[str, int | None, int, str]]:
    return [parse_port(spec) for spec in service.get("ports") or []]


def container_port(service: dict[str, Any]) -> int:
    ports = {container for _, _, container, _ in published_ports(service)}
    assert len(ports) == 1, f"expected one container port, found {ports}"
    return ports.pop()


def volume_source(spec: Any) -> str | None:
    """The source of one `volumes` entry; None for an anonymous volume."""
    if isinstance(spec, dict):
        return spec.get("source")
    parts = str(spec).split(":")
    return parts[0] if len(parts) >= 2 else None


def volume_target(spec: Any) -> str:
    if isinstance(spec, dict):
        return str(spec["target"])
    parts = str(spec).split(":")
    return parts[1] if len(parts) >= 2 else parts[0]


def is_named_volume(source: str) -> bool:
    return not source.startswith((".", "/", "~", "$"))


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(instruction, arguments) of every Dockerfile instruction, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def base_images(instructions: list[tuple[str, str]]) -> list[str]:
    """The image of every FROM, with the global ARG defaults substituted."""
    first_from = next(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    defaults = dict(
        rest.split("=", 1)
        for keyword, rest in instructions[:first_from]
        if keyword == "ARG" and "=" in rest
    )
    stages = [rest.split()[0] for keyword, rest in instructions if keyword == "FROM"]
    return [re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], image) for image in stages]


# --- the compose file ----------------------------------------------------------------


def test_every_service_has_an_image_or_a_build(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, f"{name} has neither image nor build"


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        if "image" not in svc:
            continue
        repository, _, tag = str(svc["image"]).rpartition(":")
        assert repository, f"{name}: image {svc['image']} has no tag"
        assert "/" not in tag, f"{name}: image {svc['image']} has no tag"
        assert tag != "latest", f"{name}: image {svc['image']} is not pinned"


def test_depends_on_targets_exist(services: dict[str, dict[str, Any]]) -> None:
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, svc in services.items():
        for target, condition in dependencies(svc).items():
            assert target in services, f"{name} depends on unknown service {target}"
            assert condition in conditions, f"{name}: unknown condition {condition}"
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{target} has no healthcheck"
            if condition == "service_completed_successfully":
                restart = services[target].get("restart")
                assert restart in ONE_SHOT_RESTARTS, f"one-shot {target} restarts: {restart}"


def test_dependencies_have_no_cycle(services: dict[str, dict[str, Any]]) -> None:
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"dependency cycle: {' -> '.join((*path, name))}"
        if name in done:
            return
        for target in dependencies(services[name]):
            visit(target, (*path, name))
        done.add(name)

    for name in services:
        visit(name, ())


def test_keel_services_share_one_build_and_run_keel_subcommands(
    services: dict[str, dict[str, Any]],
) -> None:
    keel = keel_services(services)
    assert {build_of(svc) for svc in keel.values()} == {(".", "Dockerfile")}
    commands = {}
    for name, svc in keel.items():
        words = command_words(svc)
        assert words, f"{name} has no command"
        assert words[0] in KEEL_SUBCOMMANDS, f"{name} runs `keel {words[0]}`"
        assert "entrypoint" not in svc, f"{name} overrides the keel entrypoint"
        commands[words[0]] = name
    assert set(commands) == KEEL_SUBCOMMANDS


def test_keel_services_reach_keel_postgres(services: dict[str, dict[str, Any]]) -> None:
    postgres = services["keel-postgres"]
    pg_env = environment(postgres)
    for name, svc in keel_services(services).items():
        env = environment(svc)
        raw_url = env.get("KEEL_DATABASE_URL")
        assert raw_url, f"{name} has no KEEL_DATABASE_URL"
        url = make_url(raw_url)
        assert url.drivername == "postgresql+psycopg", name
        assert url.host == "keel-postgres", name
        assert (url.port or 5432) == 5432, name
        assert url.username == pg_env["POSTGRES_USER"], name
        assert url.password == pg_env["POSTGRES_PASSWORD"], name
        assert url.database == pg_env.get("POSTGRES_DB", pg_env["POSTGRES_USER"]), name
        assert dependencies(svc).get("keel-postgres") == "service_healthy", name


def test_keel_services_reach_temporal(services: dict[str, dict[str, Any]]) -> None:
    temporal = temporal_service(services)
    address = f"{temporal}:{container_port(services[temporal])}"
    for name, svc in keel_services(services).items():
        assert environment(svc).get("TEMPORAL_ADDRESS") == address, name


def test_keel_processes_wait_for_migrations_and_search_attributes(
    services: dict[str, dict[str, Any]],
) -> None:
    setup = image_service(services, "temporalio/admin-tools")
    for name, svc in keel_services(services).items():
        if command_words(svc)[0] == "migrate":
            continue
        deps = dependencies(svc)
        assert deps.get("keel-migrate") == "service_completed_successfully", name
        assert deps.get(setup) == "service_completed_successfully", name


def test_keel_services_take_secrets_from_the_environment(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, svc in keel_services(services).items():
        env = environment(svc)
        for variable in SECRET_VARIABLES:
            value = env.get(variable)
            assert value is None or value.startswith("${"), f"{name}: {variable} is hard-coded"
        assert env.get("KEEL_API_HOST") == "0.0.0.0", name
        assert env.get("KEEL_API_PORT") == "8000", name
        assert env.get("KEEL_LOG_FORMAT") == "json", name
        assert "ANTHROPIC_API_KEY" in env, name


def test_keel_processes_share_the_encryption_settings(
    services: dict[str, dict[str, Any]],
) -> None:
    """API, worker and bot read and write the same Temporal payloads: one set of keys."""
    settings = {
        name: tuple(environment(svc).get(variable, "absent") for variable in ENCRYPTION_VARIABLES)
        for name, svc in keel_services(services).items()
        if command_words(svc)[0] != "migrate"
    }
    assert len(set(settings.values())) == 1, settings
    assert "absent" not in next(iter(settings.values())), settings


def test_worker_serves_metrics_inside_the_network(services: dict[str, dict[str, Any]]) -> None:
    (worker,) = (
        svc for svc in keel_services(services).values() if command_words(svc)[0] == "worker"
    )
    env = environment(worker)
    assert env.get("KEEL_WORKER_METRICS_HOST") == "0.0.0.0"
    port = env.get("KEEL_WORKER_METRICS_PORT")
    assert port is not None and int(port) > 0
    assert port in [str(exposed).partition("/")[0] for exposed in worker.get("expose") or []]
    # Published on the host, a second replica (`--scale keel-worker=2`) could not start.
    assert not published_ports(worker)


def test_telegram_is_opt_in_and_gets_its_token(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in keel_services(services).items():
        if command_words(svc)[0] == "telegram":
            assert svc.get("profiles") == ["telegram"], name
            assert "KEEL_TELEGRAM_BOT_TOKEN" in environment(svc), name
        else:
            assert not svc.get("profiles"), f"{name} should start by default"


def test_the_bot_and_the_worker_share_the_telegram_settings(
    services: dict[str, dict[str, Any]],
) -> None:
    by_command = {command_words(svc)[0]: svc for svc in keel_services(services).values()}
    bot, worker, api = by_command["telegram"], by_command["worker"], by_command["api"]
    for service in (bot, worker):  # the worker sends what the bot says
        env = environment(service)
        assert env.get("KEEL_TELEGRAM_BOT_TOKEN") is None and "KEEL_TELEGRAM_BOT_TOKEN" in env
        assert "KEEL_TELEGRAM_BASE_URL" in env
    assert "KEEL_TELEGRAM_BOT_TOKEN" not in environment(api)  # nothing there needs it
    bot_env = environment(bot)
    assert "KEEL_TELEGRAM_WEBHOOK_URL" in bot_env
    assert bot_env.get("KEEL_TELEGRAM_WEBHOOK_HOST") == "0.0.0.0"
    assert [str(port) for port in bot.get("expose", [])] == [bot_env["KEEL_TELEGRAM_WEBHOOK_PORT"]]
    assert not bot.get("ports"), "the webhook is for a reverse proxy, not the host"
    api_name = next(name for name, svc in services.items() if svc is api)
    assert dependencies(bot).get(api_name) == "service_healthy"
    assert dependencies(bot).get("keel-postgres") == "service_healthy"


def test_api_is_published_and_health_checked(services: dict[str, dict[str, Any]]) -> None:
    (api,) = (svc for svc in keel_services(services).values() if command_words(svc)[0] == "api")
    assert [(published, target) for _, published, target, _ in published_ports(api)] == [
        (8000, 8000)
    ]
    test = api["healthcheck"]["test"]
    assert test[0] in {"CMD", "CMD-SHELL"}
    assert "http://127.0.0.1:8000/healthz" in " ".join(test)


def test_published_ports_do_not_collide(services: dict[str, dict[str, Any]]) -> None:
    seen: dict[tuple[int, str], str] = {}
    for name, svc in services.items():
        for _, published, _, protocol in published_ports(svc):
            if published is None:
                continue
            key = (published, protocol)
            assert key not in seen, f"{name} and {seen.get(key)} both publish {published}"
            seen[key] = name


def test_temporal_ui_points_at_temporal(services: dict[str, dict[str, Any]]) -> None:
    temporal = temporal_service(services)
    ui = services[image_service(services, "temporalio/ui")]
    address = f"{temporal}:{container_port(services[temporal])}"
    assert environment(ui)["TEMPORAL_ADDRESS"] == address
    assert [(published, target) for _, published, target, _ in published_ports(ui)] == [
        (8080, 8080)
    ]
    assert temporal in dependencies(ui)


def test_temporal_uses_its_own_postgres(services: dict[str, dict[str, Any]]) -> None:
    temporal = services[temporal_service(services)]
    env = environment(temporal)
    assert env["DB"] == "postgres12"
    assert env["POSTGRES_SEEDS"] in services
    assert env["POSTGRES_SEEDS"] != "keel-postgres"
    assert dependencies(temporal)[env["POSTGRES_SEEDS"]] == "service_healthy"
    assert "temporal operator cluster health" in " ".join(temporal["healthcheck"]["test"])


def test_setup_registers_every_search_attribute(services: dict[str, dict[str, Any]]) -> None:
    temporal = temporal_service(services)
    setup = services[image_service(services, "temporalio/admin-tools")]
    assert dependencies(setup) == {temporal: "service_healthy"}
    assert setup.get("restart") in ONE_SHOT_RESTARTS
    assert environment(setup)["TEMPORAL_ADDRESS"] == (
        f"{temporal}:{container_port(services[temporal])}"
    )
    script = " ".join(command_words(setup))
    assert "temporal operator search-attribute create" in script
    assert "--type Keyword" in script
    for attribute in SEARCH_ATTRIBUTES:
        assert re.search(rf"\b{attribute}\b", script), f"{attribute} is not registered"


def test_setup_registers_the_search_attributes_the_code_declares(
    services: dict[str, dict[str, Any]],
) -> None:
    """Every `SearchAttributeKey.for_<type>("Name")` in Keel's packages is registered, so a
    new search attribute cannot reach production without its registration."""
    setup = services[image_service(services, "temporalio/admin-tools")]
    script = " ".join(command_words(setup))
    declared: dict[str, str] = {}
    for package in ("activities", "api", "core", "schemas", "workers", "workflows"):
        for source in (ROOT / package).rglob("*.py"):
            for kind, name in re.findall(
                r"SearchAttributeKey\.for_(\w+)\(\s*[\"'](\w+)[\"']", source.read_text()
            ):
                declared[name] = kind
    for name, kind in declared.items():
        assert kind == "keyword", f"{name} is a {kind}: register it with its own --type"
        assert re.search(rf"\b{name}\b", script), f"{name} is not registered by the setup"


def test_setup_script_escapes_shell_variables(services: dict[str, dict[str, Any]]) -> None:
    """Compose interpolates `$NAME` itself: the shell's variables must be written `$$`."""
    setup = services[image_service(services, "temporalio/admin-tools")]
    for word in command_words(setup):
        unescaped = word.replace("$$", "")
        assert "$" not in unescaped, f"unescaped $ in: {unescaped[unescaped.index('$') :][:40]}"


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, svc in compose["services"].items():
        for spec in svc.get("volumes") or []:
            source = volume_source(spec)
            if source and is_named_volume(source):
                assert source in declared, f"{name} uses undeclared volume {source}"
                used.add(source)
    assert used == declared, f"declared but unused: {declared - used}"


def test_postgres_data_lives_in_named_volumes(services: dict[str, dict[str, Any]]) -> None:
    postgres = [name for name, svc in services.items() if "postgres" in str(svc.get("image", ""))]
    assert len(postgres) == 2
    for name in postgres:
        mounts = {
            str(spec).split(":")[1]: volume_source(spec) for spec in services[name]["volumes"]
        }
        source = mounts.get("/var/lib/postgresql/data")
        assert source, name
        assert is_named_volume(source), name
        assert "healthcheck" in services[name], name


def test_bind_mounted_files_exist(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        for spec in svc.get("volumes") or []:
            source = volume_source(spec)
            if source and source.startswith("."):
                path = COMPOSE_FILE.parent / source
                assert path.exists(), f"{name} mounts missing {source}"
                if path.suffix in {".yml", ".yaml"}:
                    yaml.safe_load(path.read_text())


# --- the image -------------------------------------------------------------------------


def test_dockerfile_runs_keel_as_a_user_from_the_locked_environment() -> None:
    instructions = dockerfile_instructions()
    assert all(image.startswith("python:3.11-slim") for image in base_images(instructions))
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    final = dict(instructions[last_from:])
    assert json.loads(final["ENTRYPOINT"]) == ["keel"]
    assert json.loads(final["CMD"]) == ["api"]
    assert final.get("USER") not in {None, "root", "0"}
    assert "/app/.venv/bin" in final["ENV"]
    runs = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    assert re.search(r"pip install \S*uv", runs)
    assert "uv sync --frozen --no-dev" in runs


def test_dockerignore_keeps_local_state_out_but_not_the_project() -> None:
    patterns = {
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for pattern in (".venv", ".keel", ".git", ".env", "**/__pycache__"):
        assert pattern in patterns, f"{pattern} is not ignored"
    for needed in ("pyproject.toml", "uv.lock", "README.md", "core", "migrations"):
        assert needed not in patterns, f"{needed} is needed by the build"

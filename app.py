"""ArticleStream: the Starlette app (routes, lifespan, middleware). `python app.py` serves it."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import FrameType

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from api import routes
from api.access import exposure_warning
from api.errors import EXCEPTION_HANDLERS
from api.middleware import AccessLog, JsonCORSMiddleware
from api.ratelimit import Limiter, RateLimiter
from api.service import Service
from api.stream import OpenStreams
from pipeline.backend import Backend, open_backend
from pipeline.llm import LLM, Provider, build_provider
from pipeline.logs import configure_logging
from pipeline.metrics import Metrics
from pipeline.settings import Settings, SettingsError
from pipeline.tracing import Tracing, open_tracing

logger = logging.getLogger("articlestream")

STATIC_DIR = Path(__file__).resolve().parent / "static"


def create_app(settings: Settings, *, provider: Provider | None = None,
               tracing: Tracing | None = None) -> Starlette:
    """The app; `provider` replaces the one the settings name (tests hand in a scripted one),
    and `tracing` the tracing they ask for (tests hand in one that keeps spans in memory)."""
    shutdown_requested = asyncio.Event()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Service]]:
        metrics = Metrics()
        llm_provider = provider or build_provider(settings)
        traces = tracing or open_tracing(settings)
        llm = LLM.from_settings(llm_provider, settings, metrics, traces)
        try:
            async with open_backend(settings, llm, metrics) as backend:
                service = Service(
                    settings=settings,
                    store=backend.store,
                    runner=backend.runner,
                    shared=backend.shared,
                    metrics=metrics,
                    limiter=_limiter(settings, backend),
                    streams=OpenStreams(settings.send_timeout_s),
                    tracing=traces,
                    webhooks=backend.webhooks,
                )
                async with _serve(service, backend, shutdown_requested):
                    yield {"service": service}
        finally:
            await llm_provider.aclose()
            await traces.shutdown()

    async def index(request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html")

    middleware = [Middleware(AccessLog)]
    if settings.cors_origins:
        middleware.append(Middleware(
            JsonCORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID",
                           "Prefer"],
            expose_headers=["Location", "Retry-After"],
        ))
    app = Starlette(
        routes=[
            Route("/", index),
            Route("/healthz", routes.healthz),
            Route("/readyz", routes.readyz),
            Route("/metrics", routes.metrics),
            Route("/openapi.json", routes.openapi),
            Route("/api/jobs", routes.jobs, methods=["GET", "POST"]),
            Route("/api/jobs/{job_id}", routes.job, methods=["GET", "DELETE"]),
            Route("/api/jobs/{job_id}/events", routes.job_events, methods=["GET"]),
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        ],
        middleware=middleware,
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.shutdown_requested = shutdown_requested
    return app


def _limiter(settings: Settings, backend: Backend) -> Limiter:
    """Submit buckets where the jobs are: shared on Redis, else in this process."""
    rate = {"per_minute": settings.rate_limit_per_minute, "burst": settings.rate_limit_burst}
    if backend.shared is not None:
        from api.ratelimit_redis import RedisRateLimiter

        return RedisRateLimiter(backend.shared.client, **rate)
    return RateLimiter(**rate)


@asynccontextmanager
async def _serve(service: Service, backend: Backend,
                 shutdown_requested: asyncio.Event) -> AsyncIterator[None]:
    """Run the backend while the app serves; drain on SIGTERM, or when the app stops."""
    drained = asyncio.Event()

    async def drain_once() -> None:
        try:
            await drain(service)
        finally:
            drained.set()

    async def drain_on_request() -> None:
        await shutdown_requested.wait()
        await drain_once()

    async with anyio.create_task_group() as tg:
        await tg.start(backend.run)
        tg.start_soon(drain_on_request)
        tg.start_soon(service.streams.watch)
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                if service.runner.draining:
                    await drained.wait()  # the signal's drain is under way
                else:
                    # Without a signal (an embedding server, a test) it happens here.
                    await drain_once()
            tg.cancel_scope.cancel()


async def drain(service: Service) -> None:
    """Finish or end every job and let open streams close; then pending webhook deliveries get
    what is left of the shutdown budget (DRAIN_SECONDS + 2 s), so the `completed` deliveries of
    the jobs the drain ended still have time, and the whole stop stays within the budget."""
    started = time.monotonic()
    try:
        await service.runner.drain()
    finally:
        service.streams.close_all()
    if service.webhooks is not None:
        spent = time.monotonic() - started
        await service.webhooks.drain(max(0.0, service.settings.shutdown_budget_s - spent))


class Server(uvicorn.Server):
    """uvicorn, but the app hears SIGTERM at once, not after every stream has closed."""

    def __init__(self, config: uvicorn.Config, shutdown_requested: asyncio.Event) -> None:
        super().__init__(config)
        self.shutdown_requested = shutdown_requested

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        logger.info("received %s: draining", signal.Signals(sig).name)
        asyncio.get_running_loop().call_soon_threadsafe(self.shutdown_requested.set)
        super().handle_exit(sig, frame)


def main() -> None:
    try:
        settings = Settings.from_env(os.environ)
    except SettingsError as exc:
        raise SystemExit(f"articlestream: {exc}") from None
    configure_logging(settings.log_level)
    if warning := exposure_warning(settings):
        logger.warning(warning)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,  # AccessLog logs requests without their query strings
        timeout_graceful_shutdown=int(settings.shutdown_budget_s),
        proxy_headers=False,  # api.access decides which proxies to believe
    )
    Server(config, app.state.shutdown_requested).run()


if __name__ == "__main__":
    main()

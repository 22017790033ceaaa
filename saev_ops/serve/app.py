"""``saev-ops serve``: a local web app over the registry and the files it points at (step 4, explore).

Read-only: the app calls only the registry's read methods and opens data files for reading; the one thing it writes is
an output's latent index (:mod:`saev_ops.serve.mapped`), derived from the output and kept beside it or in the home's
cache. Images are served only as registered examples of registered datasets (``/img/<dataset id>/<example>.png``: the
path comes from the dataset's own index, never from the request). Every value is rendered through Jinja2 with
autoescaping; every parameter is validated and a bad one answers with a 4xx page that says what was expected; an
unexpected error answers 500 with no traceback (it goes to the log). With a token, every request must carry it (once
as ``?token=``, which sets a cookie, or in the cookie).
"""

from __future__ import annotations

import hmac
import io
import logging
import math
import pathlib
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from saev_ops import errors
from saev_ops.extras import require

if TYPE_CHECKING:
    from starlette.requests import Request

log = logging.getLogger(__name__)

MAX_WHERE = 20
MAX_CURVES = 200  # runs drawn in a sweep's curves
MAX_TEXT = 300
TOKEN_COOKIE = "saev_ops_token"
IMAGE_SIZES = (112, 224, 448)
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_./-]{0,63}$")
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


class BadParameter(errors.QueryError):
    """A query or path parameter that is not what the page expects (answered 400)."""


def _status_of(exc: Exception) -> int:
    if isinstance(exc, errors.NotFoundError):
        return 404
    if isinstance(exc, (errors.QueryError, errors.ConfigError)):
        return 400
    if isinstance(exc, errors.DataError):
        return 409
    return 500


class Params:
    """The query parameters of one request, read with a check each (a bad one raises :class:`BadParameter`)."""

    def __init__(self, query: Any) -> None:
        self.query = query

    def integer(self, name: str, default: int, lo: int = 0, hi: int = 2**62) -> int:
        raw = self.query.get(name)
        if raw is None or raw == "":
            return default
        if not re.fullmatch(r"-?\d{1,19}", raw) or not lo <= int(raw) <= hi:
            raise BadParameter(f"parameter {name!r}: expected a whole number in {lo}..{hi}, got {raw[:40]!r}")
        return int(raw)

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        raw = self.query.get(name) or default
        if raw not in choices:
            raise BadParameter(f"parameter {name!r}: expected one of {', '.join(choices)}, got {raw[:40]!r}")
        return raw

    def key(self, name: str, default: str | None = None) -> str | None:
        raw = self.query.get(name) or default
        if raw is None:
            return None
        if not _KEY_RE.match(raw):
            raise BadParameter(f"parameter {name!r}: expected a metric or hyperparameter name, got {raw[:40]!r}")
        return raw

    def text(self, name: str) -> str:
        raw = self.query.get(name) or ""
        if len(raw) > MAX_TEXT:
            raise BadParameter(f"parameter {name!r}: at most {MAX_TEXT} characters")
        return raw.strip()

    def where(self) -> tuple[str, ...]:
        terms = tuple(t.strip() for t in self.query.getlist("where") if t.strip())
        if len(terms) > MAX_WHERE or any(len(t) > MAX_TEXT for t in terms):
            raise BadParameter(f"parameter 'where': at most {MAX_WHERE} terms of {MAX_TEXT} characters")
        return terms

    def sort(self) -> str | None:
        raw = self.text("sort")
        if raw and not _KEY_RE.match(raw.lstrip("+-")):
            raise BadParameter(f"parameter 'sort': expected a key with an optional + or -, got {raw[:40]!r}")
        return raw or None


def _fmt(value: Any) -> str:
    """A value as a table cell: numbers to 4 significant digits, nothing for None."""
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.4g}"
    return str(value)


def _heat_styles(grid: list[list[float]] | None, vmax: float) -> list[str] | None:
    """One CSS background per patch, row-major, in the report's colours (patches where it does not fire veiled)."""
    if grid is None:
        return None
    from saev_ops.explore.report import heat_rgba

    return [f"background:rgba({r:.0f},{g:.0f},{b:.0f},{a / 255:.2f})"
            for r, g, b, a in heat_rgba(grid, vmax).reshape(-1, 4).tolist()]


def _templates() -> Any:
    jinja2 = require("jinja2", "serve", "saev-ops serve")
    env = jinja2.Environment(loader=jinja2.PackageLoader("saev_ops.serve", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = _fmt
    env.filters["pct"] = lambda v: "" if v is None else f"{100 * v:.1f}%"
    env.filters["q"] = lambda v: quote(str(v), safe="")
    env.globals["heat_styles"] = _heat_styles
    return env


def plotly_js() -> pathlib.Path:
    """plotly.js as shipped inside the plotly package (nothing is fetched at run time)."""
    plotly = require("plotly", "serve", "saev-ops serve")
    path = pathlib.Path(str(plotly.__file__)).parent / "package_data" / "plotly.min.js"
    if not path.exists():
        raise errors.ConfigError(f"{path}: plotly's bundled JavaScript is missing; reinstall plotly")
    return path


def create_app(db_url: str, *, token: str | None = None) -> Any:
    """The ASGI app over the registry at ``db_url`` (opened read-only: a missing registry is an error)."""
    require("starlette", "serve", "saev-ops serve")
    from starlette.applications import Starlette
    from starlette.middleware import Middleware

    explorer = Explorer(db_url)
    app = Starlette(routes=explorer.routes(), middleware=[Middleware(_Guard, token=token)],
                    exception_handlers={404: explorer.not_found, 405: explorer.not_found})
    app.state.registry = explorer.registry
    return app


def _path_int(request: Request, name: str) -> int:
    value = int(request.path_params[name])
    if not 0 <= value < 2**62:
        raise BadParameter(f"{name}: out of range")
    return value


class Explorer:
    """The pages: one method per route, each given the request and its checked parameters."""

    def __init__(self, db_url: str) -> None:
        from saev_ops.registry import Registry
        from saev_ops.serve.outputs import OutputCache

        self.registry = Registry(db_url, create=False, hold_connections=False)
        self.env = _templates()
        self.cache = OutputCache()
        static = pathlib.Path(__file__).parent / "static"
        self.static_files = {"app.js": static / "app.js", "style.css": static / "style.css",
                             "plotly.min.js": plotly_js()}

    def routes(self) -> list[Any]:
        from starlette.routing import Route

        wrap = self._handler
        return [
            Route("/", wrap(self.home)),
            Route("/sweep/{name}", wrap(self.sweep)),
            Route("/sweep/{name}/table", wrap(self.sweep_table)),
            Route("/api/sweep/{name}/points", wrap(self.sweep_points)),
            Route("/api/sweep/{name}/curves", wrap(self.sweep_curves)),
            Route("/run/{run_id:int}", wrap(self.run)),
            Route("/run/{run_id:int}/compare", wrap(self.run_compare)),
            Route("/api/run/{run_id:int}/curves", wrap(self.run_curves)),
            Route("/output/{output_id:int}", wrap(self.output)),
            Route("/output/{output_id:int}/latent/{latent:int}", wrap(self.latent)),
            Route("/output/{output_id:int}/image/{example:int}", wrap(self.image)),
            Route("/output/{output_id:int}/find-image", wrap(self.find_image)),
            Route("/img/{dataset_id:int}/{example:int}.png", wrap(self.image_png)),
            Route("/static/{name}", wrap(self.static_file)),
        ]

    # -- plumbing --------------------------------------------------------------------------------------------------
    def page(self, template: str, code: int = 200, **ctx: Any) -> Any:
        from starlette.responses import HTMLResponse

        return HTMLResponse(self.env.get_template(template).render(**ctx), status_code=code)

    def error_page(self, code: int, message: str) -> Any:
        return self.page("error.html", code, status=code, message=message)

    def not_found(self, request: Request, exc: Exception) -> Any:
        code = int(getattr(exc, "status_code", 404))
        return self.error_page(code, "no such page" if code == 404 else str(getattr(exc, "detail", "")))

    def _handler(self, fn: Callable[[Any, Params], Any]) -> Callable[[Any], Any]:
        """``fn`` as a route endpoint (run in Starlette's thread pool): saev-ops errors become 4xx pages (JSON under
        /api/), anything else a 500 page with the traceback in the log only."""
        from starlette.responses import JSONResponse

        def endpoint(request: Request) -> Any:
            try:
                return fn(request, Params(request.query_params))
            except errors.SaevOpsError as exc:
                code = _status_of(exc)
                if code >= 500:
                    log.error("%s: %s", request.url.path, exc)
                if request.url.path.startswith("/api/"):
                    return JSONResponse({"error": str(exc)}, status_code=code)
                return self.error_page(code, str(exc))
            except Exception:
                log.exception("%s failed", request.url.path)
                return self.error_page(500, "internal error (the server's log has the details)")

        return endpoint

    # -- sweeps and runs -------------------------------------------------------------------------------------------
    def home(self, request: Request, p: Params) -> Any:
        from saev_ops.serve import views

        return self.page("home.html", **views.home(self.registry))

    def sweep(self, request: Request, p: Params) -> Any:
        from saev_ops.serve import views

        return self.page("sweep.html", **views.sweep(self.registry, request.path_params["name"], p.where(), p.sort()))

    def sweep_table(self, request: Request, p: Params) -> Any:
        from saev_ops.serve import views

        return self.page("_runs_table.html", **views.sweep(self.registry, request.path_params["name"], p.where(),
                                                           p.sort()))

    def sweep_points(self, request: Request, p: Params) -> Any:
        from starlette.responses import JSONResponse

        from saev_ops.serve import views

        x, y = p.key("x", "l0") or "l0", p.key("y", "nmse") or "nmse"
        return JSONResponse(views.points(self.registry, request.path_params["name"], x, y, p.key("group_by"),
                                         p.where()))

    def sweep_curves(self, request: Request, p: Params) -> Any:
        from starlette.responses import JSONResponse

        from saev_ops.registry import RunQuery
        from saev_ops.serve import views

        name = request.path_params["name"]
        self.registry.get_sweep(name)
        ids = [r.run.id for r in self.registry.list_runs(RunQuery(sweep=name, where=p.where()))][:MAX_CURVES]
        return JSONResponse(views.curves(self.registry, ids, p.key("key", "nmse") or "nmse"))

    def run(self, request: Request, p: Params) -> Any:
        from saev_ops.serve import views

        return self.page("run.html", **views.run(self.registry, _path_int(request, "run_id")))

    def run_curves(self, request: Request, p: Params) -> Any:
        from starlette.responses import JSONResponse

        from saev_ops.serve import views

        rid = _path_int(request, "run_id")
        self.registry.get_run(rid)
        return JSONResponse(views.curves(self.registry, [rid], p.key("key", "nmse") or "nmse"))

    def run_compare(self, request: Request, p: Params) -> Any:
        from saev_ops.serve import views

        other = p.integer("other", -1, 0)
        if other < 0:
            raise BadParameter("parameter 'other': pick a run to compare with")
        return self.page("compare.html", **views.compare(self.registry, _path_int(request, "run_id"), other))

    # -- outputs, latents, images ----------------------------------------------------------------------------------
    def output(self, request: Request, p: Params) -> Any:
        from starlette.responses import RedirectResponse

        from saev_ops.serve import views

        view = self.cache.get(self.registry, _path_int(request, "output_id"))
        goto = p.integer("latent", -1, 0)
        if goto >= 0:
            view.check_latent(goto)
            return RedirectResponse(f"/output/{view.record.id}/latent/{goto}", status_code=303)
        data = views.output(view, p.choice("sort", "frequency", views.LATENT_SORTS),
                            p.choice("order", "desc", ("asc", "desc")) == "desc", p.integer("page", 0),
                            p.choice("show", "all", ("all", "alive", "dead", "dense")))
        return self.page("output.html", **data)

    def latent(self, request: Request, p: Params) -> Any:
        from saev_ops.serve import views

        view = self.cache.get(self.registry, _path_int(request, "output_id"))
        return self.page("latent.html", **views.latent(view, _path_int(request, "latent"), p.integer("page", 0)))

    def image(self, request: Request, p: Params) -> Any:
        from saev_ops.serve import views

        view = self.cache.get(self.registry, _path_int(request, "output_id"))
        return self.page("image.html", **views.image(view, _path_int(request, "example")))

    def find_image(self, request: Request, p: Params) -> Any:
        from starlette.responses import RedirectResponse

        from saev_ops.shards.index import IndexReader

        view = self.cache.get(self.registry, _path_int(request, "output_id"))
        example = p.integer("index", -1, 0)
        if example < 0:
            path = p.text("path")
            if not path:
                raise BadParameter("give an image's index or its path as recorded")
            idx = IndexReader(pathlib.Path(view.dataset.path) / "index.lmdb")
            try:
                example = idx.find_path(path)  # a key in the dataset's index, never opened as a file
            finally:
                idx.close()
        view.check_example(example)
        return RedirectResponse(f"/output/{view.record.id}/image/{example}", status_code=303)

    def image_png(self, request: Request, p: Params) -> Any:
        from starlette.responses import Response

        dataset = self.registry.get_dataset_by_id(_path_int(request, "dataset_id"))
        size = p.integer("size", 224, 16, 1024)
        if size not in IMAGE_SIZES:
            raise BadParameter(f"parameter 'size': expected one of {', '.join(map(str, IMAGE_SIZES))}")
        png = registered_image_png(dataset, _path_int(request, "example"), size)
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    def static_file(self, request: Request, p: Params) -> Any:
        from starlette.responses import FileResponse

        name = request.path_params["name"]
        if name not in self.static_files:
            raise errors.NotFoundError(f"no static file {name!r}")
        return FileResponse(self.static_files[name], headers={"Cache-Control": "private, max-age=3600"})


def registered_image_png(dataset: Any, example: int, size: int) -> bytes:
    """The image of ``example`` of ``dataset`` as a ``size`` x ``size`` PNG (as the report draws tiles). Its path
    comes from the dataset's own index."""
    from PIL import Image

    from saev_ops.record.preprocess import to_rgb
    from saev_ops.shards.index import IndexReader

    if not 0 <= example < dataset.n_examples:
        raise errors.NotFoundError(f"dataset {dataset.name} has no example {example} (0..{dataset.n_examples - 1})")
    idx = IndexReader(pathlib.Path(dataset.path) / "index.lmdb")
    try:
        entry = idx.get(example)
    finally:
        idx.close()
    if not entry.path:
        raise errors.NotFoundError(f"dataset {dataset.name} does not record the image of example {example}")
    try:
        with Image.open(entry.path) as im:
            rgb = to_rgb(im).resize((size, size), Image.Resampling.BICUBIC)
    except OSError as exc:
        raise errors.NotFoundError(f"the image of example {example} of dataset {dataset.name} cannot be read "
                                   f"({exc.__class__.__name__})") from None
    buf = io.BytesIO()
    rgb.save(buf, format="PNG")
    return buf.getvalue()


class _Guard:
    """Security headers on every answer; with a token, requests without it are refused (403)."""

    def __init__(self, app: Any, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from starlette.datastructures import Headers, QueryParams
        from starlette.responses import PlainTextResponse, RedirectResponse

        if self.token is not None:
            query = QueryParams(scope.get("query_string", b"").decode("latin-1"))
            given = query.get("token")
            cookie = _cookie(Headers(scope=scope).get("cookie", ""), TOKEN_COOKIE)
            if given is not None and hmac.compare_digest(given.encode(), self.token.encode()):
                rest = "&".join(f"{quote(k)}={quote(v)}" for k, v in query.multi_items() if k != "token")
                response: Any = RedirectResponse(scope["path"] + (f"?{rest}" if rest else ""), status_code=303)
                response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
                await response(scope, receive, send)
                return
            if cookie is None or not hmac.compare_digest(cookie.encode(), self.token.encode()):
                await PlainTextResponse("this server needs its token: open the address `saev-ops serve` printed",
                                        status_code=403)(scope, receive, send)
                return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                            (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None

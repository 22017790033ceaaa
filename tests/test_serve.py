"""`saev-ops serve`: the latent index against scipy's transpose, every page kind through a test client (SQLite and
PostgreSQL, a registry being written meanwhile), bad input as 4xx pages, the read-only promise, the token, and a real
headless Chromium (Debian's chromium and chromium-driver, driven by Selenium) clicking through the pages."""

from __future__ import annotations

import hashlib
import pathlib
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

pytest.importorskip("starlette")
from starlette.testclient import TestClient  # noqa: E402 - after the skip for a core-only install

from saev_ops import errors  # noqa: E402
from saev_ops.registry import Registry, RunQuery  # noqa: E402
from saev_ops.serve.app import create_app  # noqa: E402
from tests.helpers import REQUIRE_SERVICES, mini_loop  # noqa: E402


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("serve")
    return mini_loop(f"sqlite:///{root / 'r.sqlite'}", root, n_classes=3)


@pytest.fixture(scope="module")
def client(loop: dict[str, Any]) -> Iterator[TestClient]:
    with TestClient(create_app(loop["url"])) as c:
        yield c


# -- the latent index -------------------------------------------------------------------------------------------------
def _random_output(folder: pathlib.Path, n_rows: int, d: int, density: float, seed: int = 0) -> Any:
    import scipy.sparse

    rng = np.random.default_rng(seed)
    m = scipy.sparse.random(n_rows, d, density=density, format="csr", random_state=rng, dtype=np.float32)
    m.data[:] = rng.integers(1, 50, size=m.nnz).astype(np.float32) / 7  # ties on purpose
    m.indices = m.indices.astype(np.int32)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "latents.npz", indices=m.indices, indptr=m.indptr.astype(np.int64), format=np.array("csr"),
             shape=np.array(m.shape), data=m.data)
    return m


def test_the_latent_index_is_the_transpose_strongest_first(tmp_path: pathlib.Path, monkeypatch) -> None:  # noqa: ANN001
    from saev_ops.serve import mapped

    monkeypatch.setattr(mapped, "BLOCK", 97)  # many blocks, uneven ones: the block boundaries must not matter
    m = _random_output(tmp_path / "out", 300, 40, 0.1)
    csr = mapped.MappedCsr.open(tmp_path / "out")
    assert isinstance(csr.indices, np.memmap) and csr.nnz == m.nnz
    labels = np.arange(300 // 3) % 4  # 3 rows per example, 4 classes
    index = mapped.latent_index(tmp_path / "out", csr, labels, 3)
    assert (tmp_path / "out" / "by_latent" / "index.json").exists()
    csc = m.tocsc()
    for j in range(40):
        rows, vals = index.of(j)
        col = csc[:, j]
        expect = sorted(zip(col.indices.tolist(), col.data.tolist(), strict=True), key=lambda rv: (-rv[1], rv[0]))
        assert list(zip(np.asarray(rows).tolist(), np.asarray(vals).tolist(), strict=True)) == expect
        if len(expect):
            counts = np.bincount(labels[np.array([r for r, _ in expect]) // 3], minlength=4)
            assert index.top_label[j] == counts.argmax() and index.purity[j] == pytest.approx(counts.max() / len(expect))
        else:
            assert index.top_label[j] == -1 and np.isnan(index.purity[j])
    # a replaced output (infer --force) is not read through the old index
    m2 = _random_output(tmp_path / "out", 300, 40, 0.2, seed=1)
    index2 = mapped.latent_index(tmp_path / "out", mapped.MappedCsr.open(tmp_path / "out"), labels, 3)
    assert len(index2.rows) == m2.nnz != m.nnz


def test_an_output_folder_that_cannot_be_written_keeps_its_index_in_the_home_cache(
        tmp_path: pathlib.Path, monkeypatch) -> None:  # noqa: ANN001
    from saev_ops.serve import mapped

    monkeypatch.setenv("SAEV_OPS_HOME", str(tmp_path / "home"))
    _random_output(tmp_path / "out", 50, 8, 0.2)
    (tmp_path / "blocker").write_text("")  # a file where the index's folder would go: no directory can be made
    monkeypatch.setattr(mapped.paths, "latent_index_dir", lambda output: tmp_path / "blocker" / "by_latent")
    index = mapped.latent_index(tmp_path / "out", mapped.MappedCsr.open(tmp_path / "out"), np.zeros(0, int), 1)
    assert str(index.path).startswith(str(tmp_path / "home" / "cache" / "by_latent"))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["latents.npz"]
    assert mapped.latent_index(tmp_path / "out", mapped.MappedCsr.open(tmp_path / "out"), np.zeros(0, int),
                               1).path == index.path  # found there the next time


def test_a_compressed_npz_is_refused_with_its_name(tmp_path: pathlib.Path) -> None:
    from saev_ops.serve.mapped import npz_member

    np.savez_compressed(tmp_path / "latents.npz", data=np.ones(4, np.float32))
    with pytest.raises(errors.DataError, match=r"latents\.npz: array 'data' is compressed"):
        npz_member(tmp_path / "latents.npz", "data")
    with pytest.raises(errors.DataError, match="cannot read array 'indices'"):
        npz_member(tmp_path / "latents.npz", "indices")


# -- every page kind --------------------------------------------------------------------------------------------------
def _pages(loop: dict[str, Any]) -> list[str]:
    out, run = loop["outputs"][0], loop["runs"][0]
    return ["/", "/sweep/rep", "/sweep/rep/table", "/api/sweep/rep/points?x=l0&y=nmse&group_by=k",
            "/api/sweep/rep/curves?key=nmse", f"/run/{run}", f"/api/run/{run}/curves?key=l0", f"/output/{out}",
            f"/output/{out}?sort=purity&order=asc&show=alive", f"/output/{out}/latent/0",
            f"/output/{out}/image/0", "/img/1/0.png", "/static/app.js", "/static/plotly.min.js"]


@pytest.mark.slow
def test_every_page_kind_answers(client: TestClient, loop: dict[str, Any]) -> None:
    for url in _pages(loop):
        r = client.get(url)
        assert r.status_code == 200, (url, r.text[:500])
        assert "content-security-policy" in r.headers
    out = loop["outputs"][0]
    home = client.get("/").text
    assert "/sweep/rep" in home and f"/output/{out}" in home
    sweep = client.get("/sweep/rep").text
    assert all(f"/run/{rid}" in sweep for rid in loop["runs"]) and "id=\"pareto\"" in sweep
    pts = client.get("/api/sweep/rep/points?x=l0&y=nmse&group_by=k").json()
    assert {g["group"] for g in pts["groups"]} == {"4", "8"} and pts["better"] == {"x": "lower", "y": "lower"}
    # the latent the output page lists first (most frequent) opens with its strongest image first
    page = client.get(f"/output/{out}").text
    first = int(re.search(rf"/output/{out}/latent/(\d+)", page).group(1))
    latent = client.get(f"/output/{out}/latent/{first}").text
    examples = [int(e) for e in re.findall(r'data-example="(\d+)"', latent)]
    assert examples and len(examples) == len(set(examples))  # one tile per image
    from saev_ops.infer import Output

    reg = Registry(loop["url"], create=False)
    o = Output.open(reg, out)
    best_row, _ = o.top_rows(first, 1)[0]
    assert examples[0] == best_row // o.info["tokens_per_example"]  # the same answer as `latents top`
    assert latent.count("<span style=\"background:") == len(examples) * 16  # builtin:tiny: a 4x4 patch grid per tile
    image = client.get(f"/output/{out}/image/{examples[0]}").text
    assert f"/output/{out}/latent/{first}" in image  # the latent is among the image's
    assert client.get(f"/output/{out}?latent={first}", follow_redirects=False).headers["location"] == \
        f"/output/{out}/latent/{first}"
    path = o.row_example(best_row)["path"]
    r = client.get(f"/output/{out}/find-image", params={"path": path}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/output/{out}/image/{examples[0]}"
    reg.close()


@pytest.mark.slow
def test_an_images_patches_count_every_latent_not_only_those_listed(client: TestClient, loop: dict[str, Any]) -> None:
    """The image page lists a patch's strongest latents; its count and title must say how many fire there in all
    (they said the listed number: at most 12, here 2)."""
    from saev_ops.serve import views
    from saev_ops.serve.outputs import OutputView

    reg = Registry(loop["url"], create=False)
    view = OutputView.open(reg, loop["outputs"][1])  # k 8: up to 8 latents a patch
    page = views.image(view, 0, n_per_patch=2)
    tokens, _, _ = view.example_rows(0)
    first, n_patches, side = view.layout()
    expect = np.bincount(tokens - first, minlength=n_patches)[:n_patches]
    assert expect.max() > 2 and np.asarray(page["count_grid"]).ravel().tolist() == expect.tolist()
    assert all(len(page["patches"][str(p)]) <= 2 and page["totals"][str(p)] == n for p, n in enumerate(expect) if n)
    reg.close()


@pytest.mark.slow
@pytest.mark.parametrize(("url", "status", "says"), [
    ("/output/1/latent/100000", 404, "latent 100000 is not in output 1"),
    ("/output/999", 404, "no inference output with id 999"),
    ("/output/1/image/5000", 404, "image 5000 is not in output 1"),
    ("/run/999", 404, "999"),
    ("/run/abc", 404, "no such page"),
    ("/sweep/nope", 404, "no sweep named"),
    ("/output/1?sort=bogus", 400, "parameter &#39;sort&#39;: expected one of"),
    ("/output/1?page=-3", 400, "parameter &#39;page&#39;"),
    ("/output/1?page=99999999999999999999999", 400, "parameter &#39;page&#39;"),
    ("/sweep/rep?where=bad%20term", 400, "bad --where expression"),
    ("/sweep/rep?sort=%3Cx%3E", 400, "parameter &#39;sort&#39;"),
    ("/api/sweep/rep/points?x=nothing", 400, "x &#39;nothing&#39; is neither"),
    ("/img/1/0.png?size=13", 400, "parameter &#39;size&#39;"),
    ("/img/1/99999.png", 404, "has no example 99999"),
    ("/img/77/0.png", 404, "77"),
    ("/static/..%2F..%2Fapp.py", 404, ""),
    ("/output/1/find-image?path=%2Fetc%2Fpasswd", 404, "is not in the index"),
    ("/output/1/find-image", 400, "give an image&#39;s index or its path"),
    ("/run/1/compare", 400, "pick a run to compare with"),
])
def test_bad_input_is_a_4xx_page_that_says_why(client: TestClient, url: str, status: int, says: str) -> None:
    r = client.get(url, follow_redirects=False)
    assert r.status_code == status, r.text[:400]
    text = r.text if not url.startswith("/api/") else r.json()["error"].replace("'", "&#39;")
    assert says in text and "Traceback" not in text


@pytest.mark.slow
def test_values_are_escaped(client: TestClient) -> None:
    r = client.get("/sweep/%3Cscript%3Ealert(1)")
    assert r.status_code == 404 and "<script>alert" not in r.text and "&lt;script&gt;alert(1)" in r.text


@pytest.mark.slow
def test_browsing_writes_nothing_to_the_registry_or_the_data(loop: dict[str, Any]) -> None:
    """Every page, twice; then the registry file and every data file are byte for byte what they were. The only new
    files are the outputs' latent indexes."""
    root = loop["root"]

    def digests() -> dict[str, str]:
        out = {}
        for p in sorted(root.rglob("*")):
            if p.is_file() and "by_latent" not in p.parts and not p.name.endswith(("-wal", "-shm")):
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
        return out

    with TestClient(create_app(loop["url"])) as c:
        c.get(f"/output/{loop['outputs'][0]}")  # the index is built on first use
        before = digests()
        for _ in range(2):
            for url in _pages(loop):
                assert c.get(url).status_code == 200
    assert digests() == before


@pytest.mark.slow
def test_a_token_guards_every_page(loop: dict[str, Any]) -> None:
    token = "s3cret-token-0123456789"
    with TestClient(create_app(loop["url"], token=token)) as c:
        assert c.get("/").status_code == 403
        assert c.get("/static/app.js").status_code == 403
        assert c.get("/?token=wrong").status_code == 403
        r = c.get(f"/sweep/rep?token={token}&sort=nmse", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/sweep/rep?sort=nmse"  # the token leaves the URL
        assert c.get("/sweep/rep?sort=nmse").status_code == 200  # the cookie carries it now


def test_serve_warns_when_it_binds_beyond_this_machine() -> None:
    from saev_ops.cli.serve import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("example.org")


def test_serve_on_a_missing_registry_says_which(tmp_path: pathlib.Path) -> None:
    with pytest.raises(errors.RegistryUnavailableError, match="r.sqlite"):
        create_app(f"sqlite:///{tmp_path / 'r.sqlite'}")
    assert not (tmp_path / "r.sqlite").exists()


@pytest.mark.slow
def test_pages_answer_while_jobs_write_the_registry(loop: dict[str, Any]) -> None:
    """A writer logs metrics and heartbeats as a training job does while the sweep and run pages are read."""
    stop = threading.Event()
    run = loop["runs"][0]
    written = []

    def writer() -> None:
        reg = Registry(loop["url"], hold_connections=False)
        step = 10_000
        while not stop.is_set():
            reg.log_metrics(run, [("nmse", step, 0.5), ("l0", step, 4.0)])
            step += 1
            written.append(step)
        reg.close()

    t = threading.Thread(target=writer)
    t.start()
    try:
        with TestClient(create_app(loop["url"])) as c:
            for _ in range(15):
                for url in ("/sweep/rep", f"/run/{run}", "/api/sweep/rep/curves?key=nmse"):
                    assert c.get(url).status_code == 200
    finally:
        stop.set()
        t.join()
    assert written


@pytest.mark.slow
@pytest.mark.postgres
def test_every_page_kind_answers_on_postgres(pg_schema_url: str, tmp_path: pathlib.Path) -> None:
    loop = mini_loop(pg_schema_url, tmp_path)
    with TestClient(create_app(pg_schema_url)) as c:
        for url in _pages(loop):
            assert c.get(url).status_code == 200, url


# -- a real browser ---------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serving(url: str) -> Iterator[str]:
    import uvicorn

    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(url), host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    t.join(10)


@pytest.fixture(scope="module")
def server(loop: dict[str, Any]) -> Iterator[str]:
    yield from _serving(loop["url"])


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        if REQUIRE_SERVICES:
            pytest.fail("Chromium and ChromeDriver are required (SAEV_OPS_REQUIRE_SERVICES=1): install Debian's "
                        "chromium and chromium-driver")
        pytest.skip("no chromium/chromedriver on this machine")
    webdriver = pytest.importorskip("selenium.webdriver")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1800",
                 f"--user-data-dir={tmp_path_factory.mktemp('chrome')}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    from selenium.webdriver.chrome.service import Service

    d = webdriver.Chrome(options=opts, service=Service(executable_path=driver))  # no download: Debian's driver
    d.set_page_load_timeout(60)
    yield d
    d.quit()


def _open(browser: Any, url: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    WebDriverWait(browser, 30).until(lambda d: d.execute_script(
        "return document.body.getAttribute('data-loaded') === '1' && "
        "(document.body.getAttribute('data-plots-pending') || '0') === '0'"))


def _clean(browser: Any) -> None:
    """Every image loaded, no script error, nothing in the console above info."""
    images, ok = (browser.execute_script(f"return document.body.getAttribute('data-{k}')") for k in
                  ("images", "images-ok"))
    assert images == ok, (browser.current_url, images, ok)
    assert browser.execute_script("return window.__errors") == 0, browser.current_url
    bad = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert not bad, (browser.current_url, bad)


@pytest.mark.slow
def test_a_browser_clicks_through_every_page_kind(server: str, browser: Any, loop: dict[str, Any],
                                                  tmp_path: pathlib.Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    out = loop["outputs"][0]
    _open(browser, server + "/")
    _clean(browser)
    browser.find_element(By.LINK_TEXT, "rep").click()
    _open(browser, browser.current_url)
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "pareto").get_attribute("data-points"))
    assert browser.find_element(By.ID, "pareto").get_attribute("data-points") == str(len(loop["runs"]))
    assert browser.find_elements(By.CSS_SELECTOR, "#pareto .main-svg") and browser.find_elements(
        By.CSS_SELECTOR, "#curves .main-svg")
    _clean(browser)
    # sort the runs table by a metric, then the other way
    browser.find_element(By.LINK_TEXT, "nmse").click()
    _open(browser, browser.current_url)

    def column(name: str) -> list[float]:
        heads = [h.text for h in browser.find_elements(By.CSS_SELECTOR, "#runs tr:first-child th")]
        i = heads.index(name)
        return [float(r.find_elements(By.TAG_NAME, "td")[i].text) for r in
                browser.find_elements(By.CSS_SELECTOR, "#runs tr")[1:]]

    asc = column("nmse")
    assert asc == sorted(asc) and "sort=nmse" in browser.current_url
    browser.find_element(By.LINK_TEXT, "nmse").click()
    _open(browser, browser.current_url)
    assert column("nmse") == sorted(asc, reverse=True)
    _clean(browser)
    # a run, its output, a latent, a tile through to its image, a patch, back to a latent
    browser.find_element(By.CSS_SELECTOR, "#runs tr:nth-child(2) td a").click()
    _open(browser, browser.current_url)
    assert browser.find_elements(By.CSS_SELECTOR, "#curves .main-svg") and "dataset tiny" in browser.find_element(
        By.ID, "lineage").text
    _clean(browser)
    _open(browser, f"{server}/output/{out}")
    assert browser.find_elements(By.CSS_SELECTOR, "#freq-hist .main-svg")
    _clean(browser)
    browser.find_element(By.CSS_SELECTOR, "#latents tr:nth-child(2) td a").click()
    _open(browser, browser.current_url)
    tiles = browser.find_elements(By.CSS_SELECTOR, "#tiles .tile")
    assert tiles and browser.find_elements(By.CSS_SELECTOR, "#act-hist .main-svg")
    # each heat map lies exactly on its image
    misfit = browser.execute_script("""
      var bad = 0;
      document.querySelectorAll('#tiles .stack').forEach(function (s) {
        var a = s.querySelector('img.base').getBoundingClientRect(), b = s.querySelector('.heat').getBoundingClientRect();
        if (a.left !== b.left || a.top !== b.top || a.width !== b.width || a.height !== b.height) { bad++; }
      });
      return bad;""")
    assert misfit == 0
    _clean(browser)
    latent_url = browser.current_url
    example = tiles[0].find_element(By.CSS_SELECTOR, "a.stack").get_attribute("data-example")
    tiles[0].find_element(By.CSS_SELECTOR, "a.stack").click()
    _open(browser, browser.current_url)
    assert browser.current_url.endswith(f"/output/{out}/image/{example}")
    _clean(browser)
    browser.find_element(By.CSS_SELECTOR, ".patch.hot").click()
    WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#patch-latents li a"))
    assert browser.find_element(By.ID, "patch-title").text.startswith("Patch ")
    browser.find_element(By.CSS_SELECTOR, "#patch-latents li a").click()
    _open(browser, browser.current_url)
    assert re.search(rf"/output/{out}/latent/\d+$", browser.current_url) and browser.current_url != ""
    _clean(browser)
    browser.get(latent_url)
    shot = tmp_path / "latent.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    import os

    if os.environ.get("SAEV_OPS_KEEP_SCREENSHOT_DIR"):  # a person's look at the pages (the README's screenshot)
        keep = pathlib.Path(os.environ["SAEV_OPS_KEEP_SCREENSHOT_DIR"])
        for name, url in (("sweep", f"{server}/sweep/rep"), ("latent", latent_url),
                          ("image", f"{server}/output/{out}/image/{example}")):
            _open(browser, url)
            browser.save_screenshot(str(keep / f"serve-{name}.png"))


@pytest.mark.slow
def test_the_quickstart_ends_with_an_explorer_over_its_registry(browser: Any, tmp_path: pathlib.Path) -> None:
    """The README's first command, then each page kind of its registry in the browser."""
    import os
    import subprocess
    import sys

    from selenium.webdriver.common.by import By

    repo = pathlib.Path(__file__).resolve().parents[1]
    env = {**os.environ, "VENV": sys.prefix, "SAEV_OPS_HOME": str(tmp_path / "qs")}
    env.pop("SAEV_OPS_DB_URL", None)
    res = subprocess.run(["bash", "examples/quickstart.sh"], cwd=repo, env=env, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "saev-ops serve" in res.stdout.splitlines()[-1]  # its last line: how to open the explorer
    url = f"sqlite:///{tmp_path / 'qs' / 'registry.sqlite'}"
    reg = Registry(url, create=False)
    runs = [r.run.id for r in reg.list_runs(RunQuery(sweep="quickstart", sort="val/nmse"))]
    out = reg.list_outputs(run_id=runs[0])[0].id
    reg.close()
    gen = _serving(url)
    server = next(gen)
    try:
        pages = {"/": "#sweeps", "/sweep/quickstart": "#pareto .main-svg", f"/run/{runs[0]}": "#curves .main-svg",
                 f"/run/{runs[0]}/compare?other={runs[1]}": "#comparison", f"/output/{out}": "#freq-hist .main-svg",
                 f"/output/{out}?sort=purity": "#latents"}
        for path, selector in pages.items():
            _open(browser, server + path)
            assert browser.find_elements(By.CSS_SELECTOR, selector), path
            _clean(browser)
        browser.find_element(By.CSS_SELECTOR, "#latents tr:nth-child(2) td a").click()
        _open(browser, browser.current_url)
        tiles = browser.find_elements(By.CSS_SELECTOR, "#tiles .tile .grid span")
        assert len(tiles) % 64 == 0 and tiles  # builtin:small: an 8x8 patch grid on every tile
        _clean(browser)
        browser.find_element(By.CSS_SELECTOR, "#tiles a.stack").click()
        _open(browser, browser.current_url)
        assert "/image/" in browser.current_url and len(browser.find_elements(By.CSS_SELECTOR, ".patch")) == 64
        _clean(browser)
    finally:
        next(gen, None)

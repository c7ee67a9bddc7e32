"""What a learner sees: `make lab`'s JupyterLab, driven by a real headless Chromium.

The browser test starts JupyterLab exactly as `make lab` does (the command is read from the
Makefile), on 127.0.0.1 and on a copy of notebooks/, opens chapter 1, clicks Run > Run All Cells,
and checks what is on the screen: every cell ran, no cell raised, and no toast covers the
outputs. It saves a screenshot of the whole notebook (`$HDB_MLOPS_ARTIFACTS`, or
runs/ci-artifacts/ when `CI` is set, else the test's tmp folder).

In JupyterLab 4 an exception and a stream on stderr look alike on the page: both are an output
``data-mime-type="application/vnd.jupyter.stderr"`` (the error's traceback is that mime type).
The test therefore saves the notebook through the UI (File > Save Notebook) and reads the output
types from the saved file: ``output_type == "error"`` is an exception and fails the test, a
``stream`` named ``stderr`` (a warning, a log line) is reported but allowed. A probe notebook
checks that this detector sees an exception and tells it from stderr.

Only the browser tests need Chromium; they skip where /usr/bin/chromium is not installed (CI
installs Debian's ``chromium`` and ``chromium-driver``). Selenium talks to /usr/bin/chromedriver
directly, so Selenium Manager never downloads a driver or a browser.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = ROOT / "hdb_mlops" / "resources" / "jupyterlab" / "overrides.json"
LAB_SETTINGS = Path(sys.prefix) / "share" / "jupyter" / "lab" / "settings"
LAB_SCHEMAS = Path(sys.prefix) / "share" / "jupyter" / "lab" / "schemas"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHAPTER_1 = "01_case_for_mlops.ipynb"
PROBE = "zz_error_probe.ipynb"
TOKEN = "hdb-mlops-browser-test"
RUN_TIMEOUT = 300  # s for Run All Cells; chapter 1 takes about 60 s on 2 cores
STDERR = "application/vnd.jupyter.stderr"
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",  # as root, in a container
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--window-size=1400,1000",
]

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"{CHROMIUM} is not installed (apt-get install chromium chromium-driver)",
)


# --- the environment's JupyterLab settings (no browser needed) ---------------------------------


def test_overrides_are_valid_settings_of_the_installed_jupyterlab():
    import jsonschema

    overrides = json.loads(OVERRIDES.read_text())
    assert overrides["@jupyterlab/apputils-extension:notification"]["fetchNews"] == "false"
    for plugin_id, values in overrides.items():
        package, plugin = plugin_id.split(":")
        schema_file = LAB_SCHEMAS / package / f"{plugin}.json"
        assert schema_file.is_file(), f"{plugin_id}: no such plugin in this JupyterLab"
        schema = json.loads(schema_file.read_text())
        unknown = sorted(set(values) - set(schema["properties"]))
        assert not unknown, f"{plugin_id} has no setting {unknown}"
        jsonschema.validate(values, schema)


def test_the_environment_has_the_repos_jupyterlab_overrides():
    installed = LAB_SETTINGS / "overrides.json"
    assert installed.is_file(), f"{installed} is missing: `make setup` installs it"
    assert json.loads(installed.read_text()) == json.loads(OVERRIDES.read_text()), (
        f"{installed} differs from {OVERRIDES.relative_to(ROOT)}: run `make setup`"
    )


# --- JupyterLab as `make lab` starts it ----------------------------------------------------------


def make_lab_command() -> list[str]:
    """`make lab`'s own command line, read from the Makefile (set-up not re-run)."""
    out = subprocess.run(
        ["make", "-n", "-s", "--no-print-directory", "-o", ".venv/.synced", "lab"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = [line for line in out.splitlines() if " lab" in line]
    assert len(lines) == 1, f"cannot find the JupyterLab command in `make -n lab`:\n{out}"
    argv = shlex.split(lines[0])
    assert argv[1:] == ["lab", "notebooks/"], f"`make lab` runs {argv}; update this test"
    return [str(ROOT / argv[0]), *argv[1:]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Lab:
    url: str
    root: Path  # the served copy of notebooks/
    log: Path

    def api(self, path: str, method: str = "GET"):
        request = urllib.request.Request(
            f"{self.url}{path}", method=method, headers={"Authorization": f"token {TOKEN}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Lab:
    base = tmp_path_factory.mktemp("lab")
    shutil.copytree(
        ROOT / "notebooks", base / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints")
    )
    (base / "runs").mkdir()  # the notebooks write to ../runs/interactive
    env = dict(os.environ)
    # a learner's first start: no user settings, no saved workspace, no user server config
    for name in ("JUPYTERLAB_SETTINGS_DIR", "JUPYTERLAB_WORKSPACES_DIR", "JUPYTER_CONFIG_DIR"):
        env[name] = str(base / name.lower())
    env["JUPYTER_RUNTIME_DIR"] = str(base / "runtime")
    log = base / "jupyterlab.log"
    command = make_lab_command()
    for _attempt in range(3):  # a free port can be taken before the server binds it
        port = free_port()
        argv = [
            *command,
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={TOKEN}",
            f"--ServerApp.root_dir={base / 'notebooks'}",
        ]
        if os.geteuid() == 0:  # CI and containers run as root; jupyter refuses without this
            argv.append("--allow-root")
        with log.open("w") as out:
            proc = subprocess.Popen(
                argv, cwd=base, env=env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        server = Lab(f"http://127.0.0.1:{port}", base / "notebooks", log)
        deadline = time.monotonic() + 90
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                server.api("/api/status")
                break
            except OSError:
                time.sleep(0.3)
        else:
            if proc.poll() is None:  # alive, but no answer
                stop(proc)
                pytest.fail(f"JupyterLab did not answer within 90 s:\n{log.read_text()[-3000:]}")
            continue  # it exited: try another port
        break
    else:
        pytest.fail(f"JupyterLab did not start:\n{log.read_text()[-3000:]}")
    try:
        yield server
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM: jupyter shuts its kernels down; then the process group, if anything is left."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # a kernel the server left behind


def write_probe(path: Path) -> None:
    """A notebook whose cells write to stderr, print, raise, and would print after the error."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    nb.cells = [
        nbformat.v4.new_code_cell('import sys\nprint("a warning, not an error", file=sys.stderr)'),
        nbformat.v4.new_code_cell('print("fine")'),
        nbformat.v4.new_code_cell("1 / 0"),
        nbformat.v4.new_code_cell('print("never runs: Run All stops at the error")'),
    ]
    nbformat.write(nb, path)


# --- the browser ----------------------------------------------------------------------------------


@pytest.fixture
def browser(lab, tmp_path):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is not installed: it is in the dev extras (pyproject.toml)")
    assert CHROMEDRIVER.exists(), f"{CHROMEDRIVER} is missing: apt-get install chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    # an explicit driver path: Selenium Manager is never run, nothing is downloaded
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        for session in lab.api("/api/sessions"):  # the next test starts from no kernel
            lab.api(f"/api/sessions/{session['id']}", method="DELETE")


CURRENT = "document.querySelector('#jp-main-dock-panel .jp-NotebookPanel:not(.lm-mod-hidden)')"
READ_PAGE = f"""
const panel = {CURRENT};
if (!panel) return null;
const indicator = panel.querySelector('.jp-Notebook-ExecutionIndicator');
const cells = [...panel.querySelectorAll('.jp-Notebook .jp-CodeCell')].map(cell => ({{
  prompt: cell.querySelector('.jp-InputPrompt').textContent.trim(),
  stderr: [...cell.querySelectorAll('.jp-OutputArea-output[data-mime-type="{STDERR}"]')]
            .map(e => e.textContent),
}}));
const tab = document.querySelector('#jp-main-dock-panel .lm-TabBar-tab.lm-mod-current');
return {{
  status: indicator && indicator.dataset.status,
  cells: cells,
  dirty: !!(tab && tab.classList.contains('jp-mod-dirty')),
  toasts: [...document.querySelectorAll('.Toastify__toast')].map(e => e.textContent.trim()),
}};
"""


def wait_for(driver, what: str, predicate, timeout: float, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while True:
        page = driver.execute_script(READ_PAGE)
        if page is not None and predicate(page):
            return page
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f} s waiting for {what}; page: {page}"
            )
        time.sleep(interval)


def click_menu(driver, menu: str, item: str) -> None:
    """Click a menu of the menu bar, then one of its items, by their labels, as a learner does."""
    from selenium.webdriver.common.by import By

    bar = [e for e in driver.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-item") if e.text == menu]
    assert bar, f"no menu {menu!r} in the menu bar"
    bar[0].click()
    deadline = time.monotonic() + 10
    while True:
        labels = driver.find_elements(By.CSS_SELECTOR, ".lm-Menu .lm-Menu-item .lm-Menu-itemLabel")
        found = [e for e in labels if e.text == item]
        if found:
            found[0].click()
            return
        assert time.monotonic() < deadline, f"no item {item!r} in the {menu} menu"
        time.sleep(0.1)


def kernel_idle(lab: Lab, notebook: str) -> bool:
    sessions = [s for s in lab.api("/api/sessions") if s["path"] == notebook]
    return bool(sessions) and sessions[0]["kernel"]["execution_state"] == "idle"


@dataclass
class RunReport:
    """What a learner's Run All left: per code cell, its prompt and the saved output types.

    Cells are numbered as a learner counts them: the first code cell is code cell 1.
    """

    notebook: str
    prompts: list[str]
    screen_stderr: list[list[str]]  # the stderr-styled outputs on the page, per code cell
    saved_outputs: list[list[dict]]  # the outputs in the notebook saved through the UI
    toasts: list[str]
    seconds: float

    def exceptions(self) -> list[tuple[int, str]]:
        return [
            (i, f"{o['ename']}: {o['evalue']}")
            for i, outputs in enumerate(self.saved_outputs, start=1)
            for o in outputs
            if o["output_type"] == "error"
        ]

    def stderr_streams(self) -> list[tuple[int, str]]:
        return [
            (i, "".join(o["text"]))
            for i, outputs in enumerate(self.saved_outputs, start=1)
            for o in outputs
            if o["output_type"] == "stream" and o["name"] == "stderr"
        ]

    def not_run(self) -> list[int]:
        return [i for i, p in enumerate(self.prompts, start=1) if not p.strip("[]:").isdigit()]

    def check(self) -> list[str]:
        """The learner-visible failures: a cell raised, a cell did not run, a toast is shown."""
        problems = [f"code cell {i} raised {e}" for i, e in self.exceptions()]
        if self.not_run():
            problems.append(f"code cells {self.not_run()} did not run (prompts {self.prompts})")
        problems += [f"a toast covers the notebook: {t!r}" for t in self.toasts]
        return problems


def run_all_cells(driver, lab: Lab, notebook: str) -> RunReport:
    """Open the notebook, Clear Outputs of All Cells, Run All Cells, wait, Save Notebook."""
    n_code = sum(
        c["cell_type"] == "code" for c in json.loads((lab.root / notebook).read_text())["cells"]
    )
    driver.get(f"{lab.url}/lab/tree/{notebook}?reset&token={TOKEN}")
    wait_for(
        driver,
        "the notebook with all its cells and an idle kernel",
        lambda p: (
            p["status"] == "idle" and len(p["cells"]) == n_code and kernel_idle(lab, notebook)
        ),
        timeout=120,
    )
    # the committed outputs carry execution counts: clear them, so that a count is this run's
    click_menu(driver, "Edit", "Clear Outputs of All Cells")
    wait_for(
        driver,
        "cleared outputs",
        lambda p: all(c["prompt"] == "[ ]:" for c in p["cells"]),
        timeout=10,
    )
    started = time.monotonic()
    click_menu(driver, "Run", "Run All Cells")
    wait_for(
        driver, "the run to start", lambda p: any(c["prompt"] != "[ ]:" for c in p["cells"]), 30
    )
    settled_since = None

    def settled(page) -> bool:  # idle, nothing queued, for 2 s in a row
        nonlocal settled_since
        quiet = page["status"] == "idle" and not any("*" in c["prompt"] for c in page["cells"])
        quiet = quiet and kernel_idle(lab, notebook)
        settled_since = (settled_since or time.monotonic()) if quiet else None
        return quiet and time.monotonic() - settled_since >= 2

    page = wait_for(driver, "Run All Cells to finish", settled, timeout=RUN_TIMEOUT)
    seconds = time.monotonic() - started - 2
    saved_before = (lab.root / notebook).stat().st_mtime_ns
    click_menu(driver, "File", "Save Notebook")
    deadline = time.monotonic() + 30
    while (lab.root / notebook).stat().st_mtime_ns == saved_before:
        assert time.monotonic() < deadline, "File > Save Notebook did not write the notebook"
        time.sleep(0.2)
    wait_for(driver, "the save to finish", lambda p: not p["dirty"], timeout=30)
    saved = json.loads((lab.root / notebook).read_text())
    saved_outputs = [c["outputs"] for c in saved["cells"] if c["cell_type"] == "code"]
    page = driver.execute_script(READ_PAGE)
    report = RunReport(
        notebook=notebook,
        prompts=[c["prompt"] for c in page["cells"]],
        screen_stderr=[c["stderr"] for c in page["cells"]],
        saved_outputs=saved_outputs,
        toasts=page["toasts"],
        seconds=seconds,
    )
    # the saved file must be what the page shows, or its output types say nothing about it
    on_screen = [bool(s) for s in report.screen_stderr]
    in_file = [any(o["output_type"] == "error" or o.get("name") == "stderr" for o in outs)
               for outs in saved_outputs]  # fmt: skip
    assert on_screen == in_file, f"page and saved notebook disagree: {on_screen} != {in_file}"
    return report


def full_notebook_screenshot(driver, path: Path) -> Path:
    """The whole notebook in one image: the window grows until the notebook no longer scrolls."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # how far the last cell ends below the notebook's visible area (JupyterLab adds room to
    # scroll past the end, so the panel's own scrollHeight is not the content's height)
    overflow = (
        f"const p = {CURRENT}; const o = p && p.querySelector('.jp-WindowedPanel-outer');"
        "if (!o) return 0; o.scrollTop = 0;"
        "const cells = o.querySelectorAll('.jp-Cell'); if (!cells.length) return 0;"
        "const last = cells[cells.length - 1].getBoundingClientRect().bottom;"
        "return Math.ceil(last + 24 - o.getBoundingClientRect().bottom);"
    )
    width, height = 1400, 1000
    for _ in range(5):  # off-screen cells take their real height only once they are rendered
        extra = driver.execute_script(overflow)
        if extra <= 0 or height >= 16000:
            break
        height = min(height + extra + 20, 16000)
        driver.set_window_size(width, height)
        time.sleep(1.5)
    driver.execute_script(overflow)
    time.sleep(0.5)
    driver.save_screenshot(str(path))
    driver.set_window_size(1400, 1000)
    return path


def artifacts_dir(tmp_path: Path) -> Path:
    if os.environ.get("HDB_MLOPS_ARTIFACTS"):
        return Path(os.environ["HDB_MLOPS_ARTIFACTS"])
    if os.environ.get("CI"):
        return ROOT / "runs" / "ci-artifacts"
    return tmp_path


@pytest.mark.browser
@needs_chromium
def test_the_error_detector_sees_an_exception_and_tells_it_from_stderr(browser, lab):
    write_probe(lab.root / PROBE)
    try:
        report = run_all_cells(browser, lab, PROBE)
    finally:  # not in the file browser of the chapter's screenshot
        (lab.root / PROBE).unlink()
    assert report.prompts == ["[1]:", "[2]:", "[3]:", "[ ]:"]
    assert report.exceptions() == [(3, "ZeroDivisionError: division by zero")]
    assert report.stderr_streams() == [(1, "a warning, not an error\n")]
    # on the page both are the same stderr-styled output; only the saved file tells them apart
    assert [bool(s) for s in report.screen_stderr] == [True, False, True, False]
    assert "Traceback" in report.screen_stderr[2][0]
    assert report.check() == [
        "code cell 3 raised ZeroDivisionError: division by zero",
        "code cells [4] did not run (prompts ['[1]:', '[2]:', '[3]:', '[ ]:'])",
    ]


@pytest.mark.browser
@needs_chromium
def test_chapter_1_runs_in_jupyterlab_as_a_learner_sees_it(browser, lab, tmp_path, capsys):
    shot = artifacts_dir(tmp_path) / "chapter1.png"
    report = None
    try:
        report = run_all_cells(browser, lab, CHAPTER_1)
    finally:  # a screenshot also when the run failed or timed out
        full_notebook_screenshot(browser, shot)
        with capsys.disabled():
            took = f", Run All Cells took {report.seconds:.0f} s" if report else ""
            print(f"\nchapter 1 in JupyterLab: screenshot {shot}{took}")
            for i, text in report.stderr_streams() if report else []:
                print(f"  code cell {i} wrote to stderr (allowed): {text.strip()[:200]}")
    # the environment's settings, as JupyterLab serves them: no news prompt, no update check
    served = lab.api("/lab/api/settings/@jupyterlab/apputils-extension:notification")
    defaults = {k: v.get("default") for k, v in served["schema"]["properties"].items()}
    wanted = json.loads(OVERRIDES.read_text())["@jupyterlab/apputils-extension:notification"]
    assert {k: defaults[k] for k in wanted} == wanted, (
        f"the JupyterLab overrides are not in effect (`make setup` installs them): {defaults}"
    )
    problems = report.check()
    assert not problems, "\n".join(problems)
    assert report.prompts == [f"[{i}]:" for i in range(1, len(report.prompts) + 1)]
    # the keyfigures cell wrote into the served copy's ../runs, not the repository's
    assert (lab.root.parent / "runs" / "interactive").is_dir()

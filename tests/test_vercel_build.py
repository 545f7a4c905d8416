"""The bundle as Vercel builds it: `vercel build` (the pinned CLI, offline) on a scratch copy of the repo."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
VERCEL = ROOT / ".tools" / "node_modules" / ".bin" / "vercel"
# What a function may carry besides api/ and lib/: files the code reads at run time (api/openapi.py
# serves openapi.json), and what the builder adds (the dependencies under _vendor/). public/ is served
# as static files, never bundled. vercel.json's excludeFiles is an allowlist of exactly this.
RUNTIME_FILES = {"openapi.json"}
SHIPPED_FOLDERS = ("api/", "lib/")
BUILDER_FOLDERS = ("_vendor/",)


def sample_path(route_file: str) -> str:
    """`api/properties/[id]` → `/api/properties/42`."""
    return "/" + re.sub(r"\[[^/\]]+\]", "42", route_file)


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> Path:
    if not VERCEL.exists():
        pytest.fail("the Vercel CLI is missing: run `make tools` (make test does)")
    scratch = tmp_path_factory.mktemp("vercel-build")
    # The build writes pyproject.toml and uv.lock into the folder it builds: never the work tree.
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (scratch / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, scratch / name)
    (scratch / ".vercel").mkdir()
    (scratch / ".vercel" / "project.json").write_text('{"settings": {}}')
    env = {**os.environ, "VERCEL_TELEMETRY_DISABLED": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run([str(VERCEL), "build", "--yes"], cwd=scratch, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    output = scratch / ".vercel" / "output"
    assert (output / "config.json").exists(), "vercel build exited 0 but built nothing"
    return output


def endpoint_files() -> set[str]:
    return {str(p.relative_to(ROOT).with_suffix("")) for p in (ROOT / "api").rglob("*.py")
            if not any(part.startswith("_") for part in p.relative_to(ROOT).parts)}


def test_there_is_one_function_per_api_file(build):
    functions = {str(p.relative_to(build / "functions").with_suffix("")) for p in (build / "functions").rglob("*.func")}
    assert functions == endpoint_files()
    assert "api/health" in functions


def test_each_function_runs_python_312_in_cdg1_settings(build):
    for func in (build / "functions").rglob("*.func"):
        config = json.loads((func / ".vc-config.json").read_text())
        assert config["runtime"] == "python3.12"
        assert config["maxDuration"] == 30


def repository_files() -> list[str]:
    """Every file of the work tree that git would commit (tracked or not ignored)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                            capture_output=True).stdout.decode().split("\0")
    return [name for name in listed if name and (ROOT / name).is_file()]


def test_only_api_lib_and_runtime_files_of_the_repository_are_in_any_function(build):
    files = repository_files()
    shippable = {name for name in files if name.startswith(SHIPPED_FOLDERS) or name in RUNTIME_FILES}
    never = set(files) - shippable
    assert {"drills/__main__.py", "tests/conftest.py", "devstack/supabase.py", "Makefile",
            "public/monitoring.js"} <= never  # the derivation sees the folders it must
    for func in (build / "functions").rglob("*.func"):
        bundled = set(json.loads((func / ".vc-config.json").read_text())["filePathMap"])
        repo_files = {name for name in bundled if not name.startswith(BUILDER_FOLDERS)}
        assert repo_files & never == set(), f"{func.name} bundles {sorted(repo_files & never)[:8]}"
        assert repo_files - shippable == set(), f"{func.name} bundles files not in the repository: {sorted(repo_files - shippable)[:8]}"
        code = {name for name in shippable if name.endswith(".py") and "__pycache__" not in name}
        assert code <= bundled, f"{func.name} misses {sorted(code - bundled)[:8]}"
        assert RUNTIME_FILES <= bundled
        assert {"_vendor/httpx/__init__.py", "_vendor/postgrest/__init__.py", "_vendor/jwt/__init__.py"} <= bundled


@pytest.mark.vercel_cli  # reads the installed CLI's builder (no fixture to set the marker from)
def test_the_launcher_the_tests_compose_is_the_one_the_pinned_cli_installs():
    # tests/lib/web/test_http.py builds Vercel's Fluid handler class from vercel-runtime's own source.
    builder = (ROOT / ".tools" / "node_modules" / "@vercel" / "python" / "dist" / "index.js").read_text()
    pinned = re.search(r'VERCEL_RUNTIME_VERSION = "([^"]+)"', builder).group(1)
    dev = (ROOT / "requirements-dev.txt").read_text()
    assert f"vercel-runtime=={pinned}" in dev, f"the CLI installs vercel-runtime {pinned}: pin it in requirements-dev.txt"


def test_dynamic_routes_reach_their_function(build):
    routes = json.loads((build / "config.json").read_text())["routes"]
    for route_file in sorted(f for f in endpoint_files() if "[" in f):
        path = sample_path(route_file)
        matching = [r for r in routes if "src" in r and "dest" in r and re.match(r["src"], path)]
        assert any(route_file in r["dest"] for r in matching), f"{path} does not reach {route_file}"


def test_no_source_file_is_served_as_static(build):
    static = {str(p.relative_to(build / "static")) for p in (build / "static").rglob("*") if p.is_file()}
    public = {str(p.relative_to(ROOT / "public")) for p in (ROOT / "public").rglob("*") if p.is_file()}
    assert static <= public, f"served but not in public/: {sorted(static - public)[:10]}"
    assert not [name for name in static if name.endswith((".py", ".sql", ".env", ".txt", ".toml", ".json"))
                and not name.startswith("openapi")]


def vercel_serves(build: Path, path: str) -> str | None:
    """The function Vercel's build output serves `path` with: a function of that name (or its
    folder's index), else the first dynamic route whose `src` matches; None if nothing does."""
    functions = build / "functions"
    for name in (path.lstrip("/"), path.lstrip("/") + "/index"):
        if (functions / f"{name}.func").exists():
            return name
    for route in json.loads((build / "config.json").read_text())["routes"]:
        if "src" in route and "dest" in route and re.match(route["src"], path):
            return urlsplit(route["dest"]).path.lstrip("/").removesuffix(".py") or None
    return None


def test_the_dakar_host_routes_every_path_to_the_function_vercel_serves_it_with(build):
    from host.routes import Routes

    routes = Routes.load()
    paths = [sample_path(f) for f in sorted(endpoint_files())] + ["/api/nowhere", "/api/properties/42/extra"]
    for path in paths:
        served = routes.match(path)
        assert (served.file.removesuffix(".py") if served else None) == vercel_serves(build, path), path

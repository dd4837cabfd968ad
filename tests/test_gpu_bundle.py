"""benchmarks/gpu_bundle.sh's ``unpack`` side on a hand-made bundle (a few bytes of tar, one tiny
wheel): its refusals, and what it unpacks and writes. ``pack`` downloads TensorFlow (about 1 GB)
and is not run here; BENCHMARKS.md ("GPU check") gives its run."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import zipfile

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "gpu_bundle.sh")


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]  # its python3: this one
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True,
                          env={**os.environ, "PATH": path, **(env or {})})


def _bundle(folder, members: dict[str, bytes], chunk: int = 50) -> str:
    """A bundle folder as ``pack`` leaves it: the xz tar of ``members`` in ``chunk``-byte pieces,
    ``deps/`` with one tiny wheel and the tar's SHA-256."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = buffer.getvalue()
    (folder / "deps").mkdir(parents=True)
    for index in range(0, len(data), chunk):
        (folder / f"c{index // chunk:02d}").write_bytes(data[index:index + chunk])
    (folder / "deps" / "bundle.sha256").write_text(hashlib.sha256(data).hexdigest() + "\n")
    with zipfile.ZipFile(folder / "deps" / "tiny_dep-0.1-py3-none-any.whl", "w") as wheel:
        wheel.writestr("tiny_dep/__init__.py", "VALUE = 7\n")
        wheel.writestr("tiny_dep-0.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: tiny-dep\nVersion: 0.1\n")
        wheel.writestr("tiny_dep-0.1.dist-info/WHEEL",
                       "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr("tiny_dep-0.1.dist-info/RECORD", "")
    return str(folder)


@pytest.mark.parametrize("args", [[], ["pack"], ["unpack"], ["unpack", "a", "b"], ["repack", "a"]])
def test_wrong_arguments_get_the_usage_line(args):
    result = _run(*args)
    line = result.stdout.strip()
    assert result.returncode == 2
    assert line.startswith("usage: benchmarks/gpu_bundle.sh pack DIR") and "\n" not in line


def test_chunks_that_do_not_make_the_bundle_are_refused_before_anything_is_written(tmp_path):
    folder = _bundle(tmp_path / "bundle", {"tensorflow/__init__.py": b"x" * 300})
    os.remove(os.path.join(folder, "c01"))  # a chunk lost on the way
    site = tmp_path / "site"
    result = _run("unpack", folder, env={"SITE": str(site)})
    assert result.returncode == 1
    line = result.stdout.strip()
    assert "do not make the bundle" in line and "copy them again" in line and "\n" not in line
    assert not site.exists()


@pytest.mark.parametrize("missing", ["c00", "deps/bundle.sha256"])
def test_a_folder_without_the_first_chunk_or_the_checksum_is_refused_in_one_line(tmp_path, missing):
    folder = _bundle(tmp_path / "bundle", {"tensorflow/__init__.py": b"x" * 300})
    os.remove(os.path.join(folder, missing))
    result = _run("unpack", folder, env={"SITE": str(tmp_path / "site")})
    line = result.stdout.strip()
    assert result.returncode == 1 and "\n" not in line
    assert line.endswith("has no c00 or no deps/bundle.sha256: copy there all that 'pack' wrote")
    assert not (tmp_path / "site").exists()


def test_unpack_restores_the_files_installs_the_deps_and_names_missing_cuda_12_libraries(tmp_path):
    members = {"tensorflow_stub/data.bin": os.urandom(200), "nvidia/cublas/lib/libcublas.so.12": b"stub"}
    folder = _bundle(tmp_path / "bundle", members)
    cuda_lib = tmp_path / "cuda" / "targets" / "x86_64-linux" / "lib"
    cuda_lib.mkdir(parents=True)
    (cuda_lib / "libcufft.so.11").write_bytes(b"")  # present under its CUDA 12 name: left alone
    site = tmp_path / "site"
    result = _run("unpack", folder, env={"SITE": str(site), "CUDA_HOME": str(tmp_path / "cuda")})
    assert result.returncode == 0, result.stdout + result.stderr
    for name, data in members.items():
        assert (site / name).read_bytes() == data
    assert (site / "tiny_dep" / "__init__.py").read_text() == "VALUE = 7\n"
    assert sorted(os.listdir(site / "cuda12_names")) == ["libcusolver.so.11"]
    assert os.readlink(site / "cuda12_names" / "libcusolver.so.11") == str(cuda_lib / "libcusolver.so.12")
    environment = (site / "ks_env.sh").read_text()
    assert f"PYTHONPATH={site}:" in environment and f"--xla_gpu_cuda_data_dir={tmp_path / 'cuda'}" in environment
    assert f"{site}/nvidia/cublas/lib:" in environment and f":{cuda_lib}:" in environment
    assert "gpu_bundle: TensorFlow" in result.stdout and "sees" in result.stdout

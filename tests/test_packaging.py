"""The installed form (a wheel, not the editable checkout) still finds its Hydra configs."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_conf_and_the_runner_finds_it(tmp_path):
    wheel_dir, site, source = tmp_path / "wheel", tmp_path / "site", tmp_path / "source"
    # build from a copy so setuptools' build/ and egg-info never land in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in ("optsample", "conf"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheel_dir),
                    str(source)], check=True, cwd=tmp_path)
    wheel = next(wheel_dir.glob("optsample-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, cwd=tmp_path)
    probe = ("import optsample.runner.app as r, optsample; from optsample.runner import plugins; print(r.config_path());"
             " print(optsample.__file__); print(','.join(sorted(plugins.entry_point_modules())));"
             " print(','.join(sorted(r.C.MODELS)))")
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); {probe}"],
                         check=True, cwd=tmp_path, capture_output=True, text=True).stdout.split()
    conf_dir, package_file = Path(out[0]), Path(out[1])
    # the wheel's metadata lists the shipped families in the entry-point group the runner imports
    assert out[2].split(",") == ["optsample.integrations.diffusers.runner", "optsample.zoo.digits.runner"]
    assert {"digits", "digits_empirical", "sd15", "gmm64"} <= set(out[3].split(","))
    assert package_file.is_relative_to(site), package_file  # the wheel's copy, not the checkout
    assert conf_dir.is_relative_to(site) and (conf_dir / "config.yaml").exists()
    assert sorted(p.name for p in (conf_dir / "experiment").glob("*.yaml")) == sorted(
        p.name for p in (ROOT / "conf" / "experiment").glob("*.yaml"))


def test_dependencies_are_ranges_and_constraints_satisfy_them():
    """pyproject.toml gives ranges (``pip install optsample`` must not downgrade an existing environment's
    diffusers / transformers / wandb: before, they were pinned ``==0.42.1`` / ``==5.23.0`` / ``==0.31.0``);
    constraints.txt keeps the exact tested set, and each of its versions lies inside every range."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = {name: reqs for name, reqs in project["optional-dependencies"].items() if name != "inception"}
    requirements = [Requirement(r) for r in project["dependencies"] + [r for reqs in extras.values() for r in reqs]]
    pinned = [str(r) for r in requirements if any(s.operator in ("==", "===") for s in r.specifier)]
    assert not pinned, f"exact pins in pyproject.toml (they belong in constraints.txt): {pinned}"
    tested = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            tested[canonicalize_name(name)] = version.strip()
    for requirement in requirements:
        version = tested.get(canonicalize_name(requirement.name))
        assert version is not None, f"{requirement.name} is not pinned in constraints.txt"
        assert requirement.specifier.contains(version, prereleases=True), f"constraints.txt {requirement.name}=={version} " \
            f"is outside pyproject.toml's {requirement}"


def test_a_checkout_uses_its_own_conf():
    """The checkout's conf/ (ROOT/conf), even when an editable install of another checkout maps optsample.conf
    elsewhere (the shared venv of this project's worktrees did: every worktree ran /work/main/conf)."""
    probe = "import optsample.runner.app as r; print(r.config_path())"
    out = subprocess.run([sys.executable, "-c", probe], check=True, cwd=ROOT, capture_output=True, text=True).stdout
    assert Path(out.strip()) == ROOT / "conf"


def test_an_installed_package_adds_a_sampler_through_the_entry_point_group(tmp_path):
    """A distribution whose entry_points.txt lists a module under [optsample.plugins]: importing the runner's
    config imports it, so its sampler is an option of sampler= (optsample/runner/plugins.py)."""
    (tmp_path / "my_plugin.py").write_text(
        "from optsample.samplers import register\n"
        "@register('entry_point_euler')\n"
        "def entry_point_euler(model, x, sigmas, *, callback, noise_sampler):\n"
        "    return x\n")
    info = tmp_path / "my_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[optsample.plugins]\nmine = my_plugin\n")
    probe = "import optsample, optsample.runner.config; print('entry_point_euler' in optsample.available())"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    out = subprocess.run([sys.executable, "-c", probe], check=True, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert out.stdout.split() == ["True"]

"""Every command line in README.md parses against the real parser (every flag it names exists, every value
is accepted), the cheap ones run with tiny sizes, and the pip extras it names exist."""
import re
import shlex
from pathlib import Path

import pytest

from sdegen import cli
from sdegen.cli import build_parser, parse

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def readme_commands() -> list[list[str]]:
    """The shell commands of the README's ```bash blocks (continuations joined, comments dropped), split
    at ``&&``, as argument lists."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                argv = shlex.split(part, comments=True)
                if argv:
                    commands.append(argv)
    return commands


def sdegen_argv(argv: list[str]) -> list[str] | None:
    """The arguments that reach sdegen's parser: ``sdegen ...`` or ``torchrun ... -m sdegen ...``."""
    if argv[0] == "sdegen":
        return argv[1:]
    if argv[0] == "torchrun" and "-m" in argv and argv[argv.index("-m") + 1] == "sdegen":
        return argv[argv.index("-m") + 2:]
    return None


SDEGEN = [a for a in map(sdegen_argv, readme_commands()) if a is not None]


def test_the_readme_has_commands():
    assert len(SDEGEN) >= 10
    named = {a[0] for a in SDEGEN if a and not a[0].startswith("-")}
    assert named <= set(cli.COMMANDS) and {"train", "sample"} <= named


@pytest.mark.parametrize("argv", SDEGEN, ids=[" ".join(a)[:60] for a in SDEGEN])
def test_every_readme_command_parses(argv, capsys):
    try:
        parse(build_parser(), argv)
    except SystemExit as e:   # --help exits 0; an unknown flag or a bad value exits 2 with the reason
        assert e.code == 0 and "--help" in argv, capsys.readouterr().err


def test_readme_pip_extras_exist():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    named = {m for argv in readme_commands() if argv[:2] == ["pip", "install"]
             for a in argv for m in re.findall(r"\.\[([\w,-]+)\]", a)}
    assert named and all(e in extras for m in named for e in m.split(","))


# --- running the cheap ones ------------------------------------------------------------------------------

RUN = "runs/digits"            # the run folder the README's commands share
TINY_VALUES = {"--n": "4", "--batch-size": "4", "--steps": "25", "--steps-scale": "0.025"}
OUTPUTS = ("--workdir", "--out", "--grid", "--json", "--markdown")
TINY_TRAIN = ["training.steps=2", "training.log_every=1", "training.ckpt_every=2", "training.sample_every=0",
              "training.tensorboard=false", "sampling.n=4"]
# Commands that need files the README does not make (data sets, downloaded weights) or minutes of CPU:
# parsed above, not run.
NOT_RUN = {"quickstart": "3 minutes of training", "fid-stats": "the CIFAR-10 data set",
           "fid": "CIFAR-10 reference statistics", "ddls": "pretrained GAN weights",
           "colorize": "an RGB (CIFAR-10) run"}


def tiny(argv: list[str], tmp: Path) -> list[str]:
    """``argv`` with small sizes, outputs under ``tmp`` and the README's run folder at ``tmp / RUN``."""
    out = []
    for i, a in enumerate(argv):
        before = argv[i - 1] if i else None
        if before in TINY_VALUES:
            a = TINY_VALUES[before]
        elif before in OUTPUTS or a == RUN:
            a = str(tmp / a)
        out.append(a)
    if out[0] == "train":
        out += TINY_TRAIN
    if out[0] == "sample":
        out += [x for k, v in (("--n", "4"), ("--batch-size", "4")) if k not in out for x in (k, v)]
    if out[0] == "gan":
        out += ["--steps", "2"]
    if out[0] == "table":
        out += ["--ode-rtol", "1e-2", "--ode-atol", "1e-2"]
    if out[0] in ("likelihood",):
        out += ["--rtol", "1e-2", "--atol", "1e-2"]
    return out + ["--threads", "1"]


def runnable(argv: list[str]) -> bool:
    if not argv or argv[0].startswith("-") or argv[0] in NOT_RUN:
        return False
    if "--from-score-sde" in argv or "--from-diffusers" in argv:   # a published model (hundreds of MB)
        return False
    if "runs/c10" in argv:                    # a CIFAR-10 run (its data set and minutes of training)
        return False
    return not ("train" in argv[:1] and not argv[1].startswith("digits"))   # CIFAR-10 training


def test_cheap_readme_commands_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    commands = [a for a in SDEGEN if runnable(a)]
    assert commands[0][:2] == ["train", "digits_vp"]          # the run the sample commands read
    failed = []
    for argv in commands:
        rc = cli.main(tiny(argv, tmp_path))
        err = capsys.readouterr().err
        if rc != 0:
            failed.append(f"{' '.join(argv)}: exit {rc}: {err.strip()[-300:]}")
    assert not failed, "\n".join(failed)
    assert (tmp_path / RUN / "config.yaml").is_file()
    assert {p.name for p in tmp_path.glob("*.npz")} >= {"samples.npz", "ode.npz", "fast.npz"}

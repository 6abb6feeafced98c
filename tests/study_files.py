"""Small study files for the study and Tune tests, written into a test's temporary folder."""

from __future__ import annotations

import textwrap
from pathlib import Path

#: A seconds-long study on the split digits: a baseline, EWC and SI, two seeds.
TINY = '''
from ray import tune

from raycl.plugins import EWCPlugin, SynapticIntelligencePlugin
from raycl.study import Arm, Benchmark, Model, Optimizer, Study

study = Study(
    name="tiny",
    benchmark=Benchmark("split_digits", n_experiences=5),
    model=Model("mlp", hidden_size=32, hidden_layers=1),
    optimizer=Optimizer("sgd", lr=0.05, momentum=0.9),
    train_epochs=1,
    train_mb_size=64,
    arms=[
        Arm("naive", baseline=True),
        Arm("ewc", lambda c: [EWCPlugin(c["ewc_lambda"])],
            {"ewc_lambda": tune.loguniform(1.0, 100.0)}),
        Arm("si", lambda c: [SynapticIntelligencePlugin(c["si_lambda"])],
            {"si_lambda": tune.grid_search([0.1, 1.0])}),
    ],
    seeds=[0, 1],
    num_samples=2,
    confirm_seeds=[],  # the search only: tests that want the confirmation phase set seeds
)
'''

#: Two identical arms, except that one trial of "dies" kills its own process after its second
#: experience (the first time only: an atomically created marker file says it happened), and an
#: arm whose trials always fail in their second experience. Every experience's training is
#: logged with the process's visible GPU, to check GPU exclusivity.
DIES = '''
import os
import time
from pathlib import Path

from raycl.plugins import StrategyPlugin
from raycl.study import Arm, Benchmark, Model, Study

HERE = Path(__file__).parent


class LogGPU(StrategyPlugin):
    """Appends "pid gpu start end" for every training experience to gpu.log."""

    def before_training_exp(self, strategy, **kwargs):
        self.start = time.time()

    def after_training_exp(self, strategy, **kwargs):
        gpu = os.environ.get("CUDA_VISIBLE_DEVICES") or "-"
        with open(HERE / "gpu.log", "a") as log:
            log.write(f"{os.getpid()} {gpu} {self.start} {time.time()}\\n")


class DieOnce(StrategyPlugin):
    """Ends the process (no exception, no cleanup) before experience 2, once per study."""

    def before_training_exp(self, strategy, **kwargs):
        if strategy.clock.train_exp_counter == 2:
            try:
                fd = os.open(HERE / "died.marker", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return
            os.close(fd)
            os._exit(1)


class Broken(StrategyPlugin):
    """Raises in its second experience, on every attempt: the trial ends in ERROR."""

    def before_training_exp(self, strategy, **kwargs):
        if strategy.clock.train_exp_counter == 1:
            raise RuntimeError("broken on purpose")


study = Study(
    name="dies",
    benchmark=Benchmark("split_digits", n_experiences=5),
    model=Model("mlp", hidden_size=32, hidden_layers=1),
    train_epochs=1,
    train_mb_size=64,
    arms=[Arm("clean", lambda c: [LogGPU()], baseline=True),
          Arm("dies", lambda c: [LogGPU(), DieOnce()], baseline=True),
          Arm("broken", lambda c: [Broken()], baseline=True)],
    seeds=[0, 1],
    max_failures=1,
)
'''


def write_study(folder: Path, text: str, name: str = "study.py",
                replace: dict[str, str] | None = None) -> Path:
    """Write a study file (after the ``replace`` substitutions) and return its path."""
    for old, new in (replace or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path

#: A clean arm and two arms whose trial process is killed (SIGKILL, once per study: an
#: atomically created marker file holds the killed pid) while a checkpoint is being written:
#: "cut_write" half-way through writing state.pt of experience 1 in the trial's temporary folder,
#: "cut_upload" after Ray copied the checkpoint of experience 3 into storage, with state.pt
#: cut to half its size there (the digest file complete).
CHECKPOINT_KILLS = '''
import os
import signal
from pathlib import Path

from raycl.plugins import StrategyPlugin
from raycl.study import Arm, Benchmark, Model, Study

HERE = Path(__file__).parent


def _first_time(stage):
    try:
        fd = os.open(HERE / f"{stage}.marker", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


class CutCheckpoint(StrategyPlugin):
    """Arms the kill before experience ``exp``: its checkpoint is the next one written."""

    def __init__(self, stage, exp):
        super().__init__()
        self.stage, self.exp = stage, exp

    def before_training_exp(self, strategy, **kwargs):
        if strategy.clock.train_exp_counter != self.exp or not _first_time(self.stage):
            return
        if self.stage == "cut_write":
            write_bytes = Path.write_bytes

            def half_then_die(path, data):
                if path.name != "state.pt":
                    return write_bytes(path, data)
                with open(path, "wb") as f:
                    f.write(data[: len(data) // 2])
                    f.flush()
                _die()

            Path.write_bytes = half_then_die
        else:
            import ray.train._internal.storage as storage

            copy = storage._pyarrow_fs_copy_files

            def copy_then_cut(source, destination, **kw):
                copy(source, destination, **kw)
                if "checkpoint_" in str(destination):
                    state = Path(destination) / "state.pt"
                    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
                    _die()

            storage._pyarrow_fs_copy_files = copy_then_cut


study = Study(
    name="cuts",
    benchmark=Benchmark("split_digits", n_experiences=5),
    model=Model("mlp", hidden_size=32, hidden_layers=1),
    train_epochs=1,
    train_mb_size=64,
    arms=[Arm("clean", baseline=True),
          Arm("cut_write", lambda c: [CutCheckpoint("cut_write", 1)], baseline=True),
          Arm("cut_upload", lambda c: [CutCheckpoint("cut_upload", 3)], baseline=True)],
    seeds=[0, 1],
    max_failures=1,
    keep_final_checkpoint=True,
)
'''

#: The smallest study that runs: one baseline trial on two experiences.
ONE_TRIAL = '''
from raycl.study import Arm, Benchmark, Model, Study

study = Study(
    name="one",
    benchmark=Benchmark("split_digits", n_experiences=2),
    model=Model("mlp", hidden_size=16, hidden_layers=1),
    train_epochs=1,
    train_mb_size=64,
    arms=[Arm("naive", baseline=True)],
    seeds=[0],
)
'''

#: A study file that reads a file relative to the working directory when imported: it
#: validates on a driver started in the file's folder, and fails in every trial process (they
#: run in folders of their own). Each import appends "<pid> <Tune trial id or driver>" to
#: imports.log beside the file.
READS_RELATIVE = '''
import os
import warnings
from pathlib import Path

from ray import tune

from raycl.study import Arm, Benchmark, Model, Study

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    try:
        WHO = tune.get_context().get_trial_id() or "driver"
    except Exception:
        WHO = "driver"
with open(Path(__file__).parent / "imports.log", "a") as log:
    log.write(f"{os.getpid()} {WHO}\\n")
CLASSES = Path("classes.txt").read_text()

study = Study(
    name="relative",
    benchmark=Benchmark("split_digits", n_experiences=2),
    model=Model("mlp", hidden_size=16, hidden_layers=1),
    train_epochs=1,
    train_mb_size=64,
    arms=[Arm("naive", baseline=True)],
    seeds=[0, 1, 2],
)
'''

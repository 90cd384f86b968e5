"""Make `accelerate launch --num_processes N --cpu` start N processes on one machine.

accelerate starts N processes through `torch.distributed.run` for GPUs only; for CPUs its launcher starts
one process unless mpirun and a hostfile are configured (huggingface/accelerate#2741, still so in 1.15).
That lone process can tell: it has accelerate's environment and `MASTER_ADDR` (which the launcher sets only
for N > 1) but no rank. It then reads N from the `accelerate launch` command that started it (its parent
process, parsed with accelerate's own parser, falling back to accelerate's config file) and replaces itself
(`exec`) with `torch.distributed.run --standalone --nproc_per_node N`, the launcher accelerate itself uses
for GPUs. Each worker gets its rank from accelerate's `PartialState` (MULTI_CPU, gloo), as under mpirun.

Workers end with their launcher: torchrun starts each worker in a session of its own, so killing the
launcher (even its whole process group) would leave them running. A worker (a rank variable is set) asks
the kernel for SIGKILL when its parent dies (Linux `prctl(PR_SET_PDEATHSIG)`), or else watches its parent's
pid from a thread; the re-launched agent asks the same before `exec` (the setting survives it), so killing
`accelerate launch` ends the agent, and that ends the workers.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Mapping, NoReturn

# Set by every launcher that really started several processes (torch.distributed.run, MPI implementations).
RANK_VARIABLES = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
PARENT_CHECK_SECONDS = 1.0


def requested_cpu_processes(environ: Mapping[str, str] = os.environ, parent_argv: list[str] | None = None) -> int | None:
    """N when this process is the lone child of `accelerate launch --num_processes N` (N > 1) on the CPU
    (`--cpu`, or no CUDA); None otherwise. Raises `ValueError` when N cannot be read from the parent."""
    if "ACCELERATE_MIXED_PRECISION" not in environ or not environ.get("MASTER_ADDR"):
        return None  # not started by accelerate's single-process launcher for N > 1
    if any(environ.get(name) for name in RANK_VARIABLES):
        return None
    import torch

    if environ.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true", "yes") and torch.cuda.is_available():
        return None
    argv = _parent_argv() if parent_argv is None else parent_argv
    arguments = _launch_arguments(argv)
    if arguments is None:
        raise ValueError("accelerate asked for several CPU processes but its launch command could not be read; "
                         "start them with `torchrun --nproc_per_node N -m gprune.evaluate …` instead")
    from accelerate.commands.config import default_config_file, load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    try:
        args = launch_command_parser().parse_args(arguments)
    except SystemExit:
        raise ValueError(f"could not parse the accelerate launch command {' '.join(argv)!r}") from None
    processes, machines = args.num_processes, args.num_machines
    config_file = args.config_file or (default_config_file if Path(default_config_file).is_file() else None)
    if (processes is None or machines is None) and config_file:
        config = load_config_from_file(config_file)
        processes = processes if processes is not None else config.num_processes
        machines = machines if machines is not None else config.num_machines
    if machines is not None and machines > 1:
        raise ValueError("accelerate launch starts one process per machine on CPUs; for several machines start the "
                         "processes with `torchrun --nnodes …` or mpirun (`accelerate launch --mpirun_hostfile …`)")
    return processes if processes is not None and processes > 1 else None


def relaunch(processes: int, module: str, arguments: list[str]) -> NoReturn:
    """Replace this process with `torch.distributed.run` starting `processes` workers of `python -m module`."""
    sys.stdout.flush()
    sys.stderr.flush()
    _kernel_kills_us_with_parent()
    os.execv(sys.executable, [sys.executable, "-m", "torch.distributed.run", "--standalone",
                              f"--nproc_per_node={processes}", "-m", module, *arguments])


def end_with_launcher(environ: Mapping[str, str] = os.environ) -> None:
    """When a launcher started this process as one of several workers, make it end when its parent dies."""
    if not any(environ.get(name) for name in RANK_VARIABLES):
        return  # a plain command may outlive its shell (nohup): only workers follow their parent
    parent = os.getppid()
    if _kernel_kills_us_with_parent():
        if os.getppid() != parent:  # it died while the kernel was asked (a death before getppid goes unseen)
            os._exit(1)
        return
    threading.Thread(target=_exit_when_orphaned, args=(parent,), name="end-with-launcher", daemon=True).start()


def _kernel_kills_us_with_parent() -> bool:
    """Ask Linux for SIGKILL when the parent dies; False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(1)


def _parent_argv() -> list[str]:
    try:
        return Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode(errors="replace").rstrip("\0").split("\0")
    except OSError:
        return []


def _launch_arguments(argv: list[str]) -> list[str] | None:
    """What follows `launch` in `accelerate launch …` or `python -m accelerate.commands.launch …`."""
    for index, word in enumerate(argv):
        if word == "launch" or word.endswith(("accelerate.commands.launch", "accelerate/commands/launch.py")):
            return argv[index + 1 :]
    return None

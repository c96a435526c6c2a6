"""One torch thread for the whole suite and the processes it starts.

torch's default (one thread per core) collapses when other jobs share the machine: the suite
took 9 min against 54 s with one thread (issue 10). Tests use tiny models, so one thread is also
the fastest on an idle machine. ``FORCE_THREADS`` covers the ``force`` commands the tests run,
in process or as subprocesses; the OpenMP/MKL variables cover any other torch process.
"""

import os

for _var in ("FORCE_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import torch  # noqa: E402  (after the environment, so a first torch import sees it too)

torch.set_num_threads(1)

# A suite started in the background of a non-interactive shell (`make test &`) inherits SIGINT
# ignored (POSIX), and force rightly leaves an ignored signal ignored (as under nohup); the
# Ctrl-C tests need it delivered, to this process and to the commands it starts.
import signal  # noqa: E402

signal.signal(signal.SIGINT, signal.default_int_handler)

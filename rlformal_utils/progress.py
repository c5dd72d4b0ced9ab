"""Progress that reads well in both places: a tqdm bar when a person runs a notebook, and four
plain summary lines (25 %, 50 %, 75 %, 100 %) when papermill executes it (``RLFORMAL_PROGRESS=lines``, set by the
runner and the tests), so executed notebooks carry no walls of bar refreshes."""
from __future__ import annotations

import os
import time


class Progress:
    def __init__(self, total: int, desc: str, lines: int = 4):
        self.total, self.desc, self.n, self.t0 = max(total, 1), desc, 0, time.time()
        self.every = max(1, self.total // lines)
        self.postfix = ""
        self.bar = None
        if os.environ.get("RLFORMAL_PROGRESS") != "lines":
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, desc=desc, mininterval=2)

    def update(self, n: int = 1, **postfix) -> None:
        self.n += n
        self.postfix = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in postfix.items())
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix_str(self.postfix, refresh=False)
        elif self.n % self.every == 0 or self.n == self.total:
            print(f"{self.desc}: {self.n}/{self.total} ({100 * self.n / self.total:.0f} %) {self.postfix}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def quiet_libraries() -> None:
    """Silence the libraries' own chatter that a reader cannot act on (transformers' weight-loading
    bars and its "loss_type=None" notice, trl's deprecation notices for the pinned 0.11.4)."""
    import warnings
    import transformers
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module="trl")
    warnings.filterwarnings("ignore", message=".*PPOTrainer.*deprecated.*")
    warnings.filterwarnings("ignore", message=".*PPOConfig.*deprecated.*")

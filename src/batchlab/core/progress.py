"""How a long call tells its caller where it is: the library never prints, the CLI renders these.

- `Say`: a message as each phase or run starts ("noise: train from the reference point ...").
- `Steps`: (done, total) within one run or sweep of batch sizes.
"""

from __future__ import annotations

from collections.abc import Callable

Say = Callable[[str], None]
Steps = Callable[[int, int], None]

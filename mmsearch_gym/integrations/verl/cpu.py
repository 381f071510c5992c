"""veRL's trainer on CPU: the ``cpu`` platform, FSDP on gloo and the ``hf`` rollout, registered.

veRL imports the modules named in ``VERL_USE_EXTERNAL_MODULES`` when ``verl`` is imported, in
the driver and in every Ray worker that inherits the variable. Run::

    VERL_USE_EXTERNAL_MODULES=mmsearch_gym.integrations.verl.cpu VERL_PLATFORM=cpu \\
        python -m verl.trainer.main_ppo --config-path policies --config-name verl-tiny-cpu

(``policies/verl-tiny-cpu.yaml`` passes both variables on to Ray's workers.) Each module
registers itself when imported (``import x`` rather than ``from x import f``: this module is
also imported while those modules are themselves importing ``verl``).
"""

from __future__ import annotations

import mmsearch_gym.integrations.verl.cpu_platform
import mmsearch_gym.integrations.verl.hf_rollout  # noqa: F401

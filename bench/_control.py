"""The real control plane on a bench's virtual clock: telemetry in, replica targets out.

`ControlledFleet` wraps `thrifty.controller.service.ControlPlane` (the object `thrifty
controller` runs) built from the bench's config: the bench's probes ingest the windows a
sidecar would send and set the ready counts a Deployment's status would report, then
`targets(now)` runs one control round (`ControlPlane.tick`: observations, autoscaler,
drift) and returns each tier's replica target. No policy function is called directly.
"""

from __future__ import annotations

import asyncio
import logging

from thrifty.config import Config
from thrifty.controller.service import ControlPlane


class ControlledFleet:
    def __init__(self, config: Config) -> None:
        # The controller logs each drift alert as a warning; in a bench they are not news.
        logging.getLogger("thrifty.controller.service").setLevel(logging.ERROR)
        self.plane = ControlPlane(config)
        self._loop = asyncio.new_event_loop()
        self._adopted = False

    def adopt(self, current: dict[str, int]) -> None:
        """Start from the replicas in place (as the controller reads them from Kubernetes)."""
        for tier, n in current.items():
            self.plane.autoscaler.set_target(tier, n)
        self._adopted = True

    def targets(self, now: float, current: dict[str, int]) -> dict[str, int]:
        if not self._adopted:
            self.adopt(current)
        self._loop.run_until_complete(self.plane.tick(now))
        return {t.name: self.plane.autoscaler.target(t.name) for t in self.plane.config.tiers}

    def close(self) -> None:
        self._loop.close()

"""Runtime drivers: how an instance's workload is started, watched and stopped
on one node. Every driver implements :class:`sidecar.drivers.base.Driver`."""

from sidecar.drivers.base import Driver, DriverError, Workload, WorkloadState

__all__ = ["Driver", "DriverError", "Workload", "WorkloadState"]

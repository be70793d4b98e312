"""Celery configuration shared by the sender (backend) and the consumer (worker).

Plain dicts only: the backend sends tasks by name and never imports worker code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from repscope.settings import Settings

EVALUATE_TASK = "repscope.evaluate"


def all_queues(settings: Settings) -> list[str]:
    """Every queue the API sends to: `queue`, plus `light_queue` when light suites are routed apart."""
    return [settings.queue] + ([settings.light_queue] if settings.light_queue and
                               settings.light_queue != settings.queue else [])


def broker_folders(settings: Settings) -> dict[str, Path]:
    root = settings.data_dir.resolve() / "broker"
    return {"queue": root / "queue", "processed": root / "processed", "control": root / "control"}


def celery_config(settings: Settings) -> dict[str, Any]:
    """Reliable-delivery settings from DESIGN.md: late acks, requeue when a worker dies, prefetch one."""
    conf: dict[str, Any] = {
        "broker_url": settings.resolved_broker_url,
        "task_default_queue": settings.queue,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
    }
    if settings.uses_embedded_broker:
        folders = broker_folders(settings)
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        conf["broker_transport_options"] = {
            "data_folder_in": str(folders["queue"]),
            "data_folder_out": str(folders["queue"]),
            "processed_folder": str(folders["processed"]),
            "control_folder": str(folders["control"]),
            "store_processed": False,
            "polling_interval": 0.5,
        }
    else:
        conf["broker_transport_options"] = {"visibility_timeout": 3600}
    return conf

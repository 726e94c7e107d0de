"""The deferred waits for EBS snapshots and volumes are budgets in time, whatever their poll interval."""

from __future__ import annotations

from kaia_ha_airflow.sensors.ec2 import EBSSnapshotCompletedSensor, EBSVolumeAvailableSensor


def test_a_pn_first_snapshot_may_take_two_days_even_polled_every_five_seconds():
    sensor = EBSSnapshotCompletedSensor(task_id="wait_snapshot", snapshot_id="snap-1", waiter_delay=5)
    assert sensor.waiter_delay * sensor.waiter_max_attempts >= 48 * 3600  # ~33 h for a first 4,000 GiB snapshot


def test_a_volume_wait_polled_every_two_seconds_still_waits_an_hour():
    sensor = EBSVolumeAvailableSensor(task_id="volume_available", volume_id="vol-1", waiter_delay=2)
    assert sensor.waiter_delay * sensor.waiter_max_attempts >= 3600


def test_each_trigger_is_rebuilt_from_what_it_serializes():
    """The triggerer rebuilds a trigger from ``serialize()``: the resource id and the wait's budget survive."""
    import importlib

    from kaia_ha_airflow.triggers.ec2 import (
        EBSSnapshotCompletedTrigger,
        EBSVolumeAvailableTrigger,
    )

    for cls, key, waiter in ((EBSSnapshotCompletedTrigger, "snapshot_id", "snapshot_completed"),
                             (EBSVolumeAvailableTrigger, "volume_id", "volume_available")):
        trigger = cls(**{key: "res-1"}, waiter_delay=2, waiter_max_attempts=7, aws_conn_id="kaia_aws",
                      region_name="us-west-2")
        path, kwargs = trigger.serialize()
        module, name = path.rsplit(".", 1)
        again = getattr(importlib.import_module(module), name)(**kwargs)
        assert again.serialize() == (path, kwargs)
        assert (again.waiter_name, again.waiter_args, again.return_key, again.return_value) == (
            waiter, {cls.ids_arg: ["res-1"]}, key, "res-1")
        assert (again.waiter_delay, again.attempts, again.region_name) == (2, 7, "us-west-2")

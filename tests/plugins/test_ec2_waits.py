"""The deferred waits for EBS snapshots, volumes and images are budgets in time, whatever their poll interval."""

from __future__ import annotations

from kaia_ha_airflow.operators.ec2 import EC2CreateImageOperator
from kaia_ha_airflow.sensors.ec2 import EBSSnapshotCompletedSensor, EBSVolumeAvailableSensor


def test_a_pn_first_snapshot_may_take_two_days_even_polled_every_five_seconds():
    sensor = EBSSnapshotCompletedSensor(task_id="wait_snapshot", snapshot_id="snap-1", waiter_delay=5)
    assert sensor.waiter_delay * sensor.waiter_max_attempts >= 48 * 3600  # ~33 h for a first 4,000 GiB snapshot


def test_an_image_may_take_hours():
    image = EC2CreateImageOperator(task_id="create_image", instance_id="i-1", image_name="cn", waiter_delay=5)
    assert image.waiter_delay * image.waiter_max_attempts >= 6 * 3600


def test_a_volume_wait_polled_every_two_seconds_still_waits_an_hour():
    sensor = EBSVolumeAvailableSensor(task_id="volume_available", volume_id="vol-1", waiter_delay=2)
    assert sensor.waiter_delay * sensor.waiter_max_attempts >= 3600

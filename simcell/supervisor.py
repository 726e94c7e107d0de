"""The cell's long-running process: moto and the AWS front layer, the world, the coordinator.

Started in the background by ``python -m simcell up``; writes ``.simcell/runtime.json`` once the seeded
cell is in sync, and tears everything down (nodes, sshd, moto) on SIGTERM or ``/control/shutdown``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading

from simcell import paths
from simcell.aws.proxy import AwsFront
from simcell.coordinator import Coordinator
from simcell.seed import Seeder, aws_client
from simcell.world import World

log = logging.getLogger("simcell")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="simcell.supervisor")
    parser.add_argument("--profile", default="instant", choices=("instant", "aws"))
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--airflow-home", default=str(paths.REPO / ".airflow"))
    parser.add_argument("--cloud-cells", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", filename=paths.SUPERVISOR_LOG
    )
    done = threading.Event()
    coordinator: Coordinator | None = None
    world = World(lambda: coordinator.url)
    front = AwsFront(hooks=world, call_log_path=paths.CALL_LOG, profile=args.profile, time_scale=args.time_scale)

    def stop_instance(instance_id: str) -> None:
        aws_client("ec2", front.endpoint_url).stop_instances(InstanceIds=[instance_id], Force=True)

    coordinator = Coordinator(world, front, stop_instance, done.set)
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    try:
        coordinator.start()
        front.start()
        seeder = Seeder(world, front.endpoint_url, cloud_cells=args.cloud_cells)
        seeder.seed()
        seeder.write(coordinator.url, args.airflow_home)
        paths.RUNTIME_FILE.write_text(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "coord_url": coordinator.url,
                    "aws_endpoint": front.endpoint_url,
                    "profile": args.profile,
                    "time_scale": args.time_scale,
                }
            )
        )
        log.info("simulated core cell is up: coordinator %s, AWS %s", coordinator.url, front.endpoint_url)
        done.wait()
    except Exception:
        log.exception("simulated core cell failed")
        return 1
    finally:
        log.info("shutting down")
        for name in list(world.hosts):
            try:
                world.shutdown(name, graceful=False)
            except Exception:
                log.exception("shutdown of %s", name)
        front.stop()
        paths.RUNTIME_FILE.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

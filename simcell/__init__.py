"""The simulated Kaia core cell: a local stand-in for an AWS account and the hosts of core cells.

It is a product feature (drills, training, developing the DAGs) and the ground every test stands on.
Nothing in ``dags/``, ``plugins/`` or ``include/`` imports it: the DAGs reach it only the way they
reach a real cell, over boto3 (``AWS_ENDPOINT_URL``) and SSH.
"""

from kaia_ha_airflow.hooks.kaia_node import shutdown_was_clean


def test_a_clean_stop_is_manager_stopped_then_database_closed_after_the_last_block():
    clean = "Inserted a new block number=5\nGot interrupt, shutting down...\nBlockchain manager stopped\nDatabase closed\n"
    assert shutdown_was_clean(clean)
    killed = "Inserted a new block number=5\nGot interrupt, shutting down...\n"
    assert not shutdown_was_clean(killed)
    restarted = clean + "Starting kpn v2.2.1\nInserted a new block number=6\n"
    assert not shutdown_was_clean(restarted)

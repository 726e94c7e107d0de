from kaia_ha_airflow.hooks.kaia_node import shutdown_was_clean, shutting_down


def test_a_clean_stop_is_manager_stopped_then_database_closed_after_the_last_block():
    clean = ("Inserted a new block number=5\nGot interrupt, shutting down...\nBlockchain manager stopped\n"
             "Database closed\n")
    assert shutdown_was_clean(clean)
    killed = "Inserted a new block number=5\nGot interrupt, shutting down...\n"
    assert not shutdown_was_clean(killed)
    restarted = clean + "Starting kpn v2.2.1\nInserted a new block number=6\n"
    assert not shutdown_was_clean(restarted)


def test_a_node_flushing_after_its_sigterm_is_told_from_one_stopped_or_running():
    flushing = "Inserted a new block number=5\nGot interrupt, shutting down...\nWriting cached state to disk block=5\n"
    assert shutting_down(flushing)
    assert not shutting_down(flushing + "Blockchain manager stopped\nDatabase closed\n")  # exited cleanly
    assert not shutting_down(flushing + "Starting kpn v2.2.1\nInserted a new block number=6\n")  # running again
    assert not shutdown_was_clean(flushing)

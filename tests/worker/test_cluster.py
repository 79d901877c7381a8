"""Rank, world size and TF_CONFIG from what a pod or an HPC job knows (distcb.worker.cluster)."""

from __future__ import annotations

import json
import os

import pytest

from distcb import worker_context
from distcb.worker import cluster
from distcb.worker.cluster import apply_alias, detect, host_aliases, tf_config


def config_of(env: dict[str, str]) -> dict:
    return json.loads(tf_config(detect(env)))


# ---------------------------------------------------------------- rank sources


def test_outside_any_job_it_is_rank_0_of_1_with_no_hosts():
    info = detect({})
    assert (info.rank, info.world_size, info.source, info.workers) == (0, 1, "default", ())


def test_distcb_rank_wins_over_every_launcher_variable():
    env = {
        "DISTCB_RANK": "1",
        "DISTCB_WORLD_SIZE": "3",
        "JOB_COMPLETION_INDEX": "2",
        "OMPI_COMM_WORLD_RANK": "0",
        "OMPI_COMM_WORLD_SIZE": "3",
        "SLURM_PROCID": "2",
        "SLURM_NTASKS": "3",
    }
    info = detect(env)
    assert (info.rank, info.world_size, info.source) == (1, 3, "DISTCB_RANK")


def test_indexed_job_rank_is_the_completion_index():
    info = detect({"JOB_COMPLETION_INDEX": "2", "DISTCB_WORLD_SIZE": "4"})
    assert (info.rank, info.world_size, info.source) == (2, 4, "JOB_COMPLETION_INDEX")


def test_jobset_rank_counts_pods_of_earlier_jobs_first():
    # replicatedJob "workers" with 3 jobs of 2 pods: job 2, pod 1 is rank 5.
    env = {
        "DISTCB_JOBSET_NAME": "train",
        "DISTCB_REPLICATED_JOB": "workers",
        "DISTCB_JOB_INDEX": "2",
        "DISTCB_JOB_REPLICAS": "3",
        "JOB_COMPLETION_INDEX": "1",
        "DISTCB_WORLD_SIZE": "6",
    }
    info = detect(env)
    assert (info.rank, info.world_size, info.source) == (5, 6, "jobset")


def test_jobset_with_one_job_is_the_completion_index():
    env = {
        "DISTCB_JOBSET_NAME": "train",
        "DISTCB_REPLICATED_JOB": "workers",
        "DISTCB_JOB_INDEX": "0",
        "JOB_COMPLETION_INDEX": "3",
        "DISTCB_WORLD_SIZE": "4",
    }
    assert detect(env).rank == 3


def test_open_mpi_rank_and_size():
    info = detect({"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "8"})
    assert (info.rank, info.world_size, info.source) == (3, 8, "OMPI_COMM_WORLD_RANK")


def test_open_mpi_under_slurm_uses_the_mpi_rank():
    # sbatch + mpirun: every process inherits the batch step's SLURM_PROCID=0.
    env = {
        "SLURM_PROCID": "0",
        "SLURM_NTASKS": "1",
        "OMPI_COMM_WORLD_RANK": "2",
        "OMPI_COMM_WORLD_SIZE": "4",
    }
    assert (detect(env).rank, detect(env).world_size) == (2, 4)


def test_slurm_rank_and_size():
    info = detect({"SLURM_PROCID": "5", "SLURM_NTASKS": "6"})
    assert (info.rank, info.world_size, info.source) == (5, 6, "SLURM_PROCID")


def test_a_declared_world_size_must_agree_with_the_launcher():
    with pytest.raises(ValueError, match="DISTCB_WORLD_SIZE=4 contradicts SLURM_NTASKS=6"):
        detect({"SLURM_PROCID": "1", "SLURM_NTASKS": "6", "DISTCB_WORLD_SIZE": "4"})
    assert detect({"SLURM_PROCID": "1", "SLURM_NTASKS": "6", "DISTCB_WORLD_SIZE": "6"}).rank == 1


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DISTCB_RANK": "two"}, "DISTCB_RANK must be an integer, found 'two'"),
        (
            {"JOB_COMPLETION_INDEX": "3", "DISTCB_WORLD_SIZE": "2"},
            r"rank 3 \(from JOB_COMPLETION_INDEX\) is outside DISTCB_WORLD_SIZE=2",
        ),
        ({"JOB_COMPLETION_INDEX": "1"}, "outside DISTCB_WORLD_SIZE=1"),
        ({"DISTCB_WORLD_SIZE": "0"}, "world size must be >= 1"),
        ({"SLURM_PROCID": "1"}, "SLURM_NTASKS is not set"),
        (
            {"OMPI_COMM_WORLD_RANK": "x", "OMPI_COMM_WORLD_SIZE": "2"},
            "OMPI_COMM_WORLD_RANK must be an integer",
        ),
        (
            {"DISTCB_JOBSET_NAME": "j", "JOB_COMPLETION_INDEX": "0", "DISTCB_WORLD_SIZE": "2"},
            "DISTCB_JOB_INDEX is not set",
        ),
        (
            {
                "DISTCB_JOBSET_NAME": "j",
                "DISTCB_REPLICATED_JOB": "w",
                "DISTCB_JOB_INDEX": "1",
                "DISTCB_JOB_REPLICAS": "2",
                "JOB_COMPLETION_INDEX": "0",
                "DISTCB_WORLD_SIZE": "3",
            },
            "DISTCB_WORLD_SIZE=3 is not a multiple of DISTCB_JOB_REPLICAS=2",
        ),
        ({"DISTCB_COLLECTIVE_PORT": "70000"}, "must be a TCP port"),
    ],
)
def test_bad_environments_say_which_variable_is_wrong(env, message):
    with pytest.raises(ValueError, match=message):
        detect(env)


# ---------------------------------------------------------------- naming schemes


def test_indexed_job_names_from_the_job_name_and_subdomain():
    env = {
        "JOB_COMPLETION_INDEX": "1",
        "DISTCB_WORLD_SIZE": "3",
        "DISTCB_JOB_NAME": "distcb-workers",
        "DISTCB_SUBDOMAIN": "distcb-workers",
        "DISTCB_COLLECTIVE_PORT": "2345",
    }
    assert config_of(env) == {
        "cluster": {
            "worker": [
                "distcb-workers-0.distcb-workers:2345",
                "distcb-workers-1.distcb-workers:2345",
                "distcb-workers-2.distcb-workers:2345",
            ]
        },
        "task": {"type": "worker", "index": 1},
    }
    assert detect(env).hosts_source == "indexed-job"


def test_indexed_job_name_falls_back_to_the_pod_hostname():
    # An Indexed Job's pod host name is <job>-<index>; the job name may contain dashes.
    env = {
        "JOB_COMPLETION_INDEX": "12",
        "DISTCB_WORLD_SIZE": "13",
        "HOSTNAME": "my-train-job-12",
        "DISTCB_SUBDOMAIN": "svc",
    }
    info = detect(env)
    assert info.workers[0] == "my-train-job-0.svc:2222"
    assert info.workers[12] == "my-train-job-12.svc:2222"


def test_indexed_job_without_subdomain_or_name_explains_what_is_missing():
    info = detect({"JOB_COMPLETION_INDEX": "0", "DISTCB_WORLD_SIZE": "2", "HOSTNAME": "w-0"})
    assert info.workers == ()
    assert "DISTCB_SUBDOMAIN is not set" in info.hosts_missing
    with pytest.raises(
        ValueError, match="cannot build TF_CONFIG for rank 0 of 2.*DISTCB_SUBDOMAIN"
    ):
        tf_config(info)
    info = detect(
        {
            "JOB_COMPLETION_INDEX": "0",
            "DISTCB_WORLD_SIZE": "2",
            "HOSTNAME": "laptop",
            "DISTCB_SUBDOMAIN": "s",
        }
    )
    assert "HOSTNAME='laptop' is not an Indexed Job pod" in info.hosts_missing


def test_jobset_names_follow_jobset_replicated_job_job_and_pod_index():
    env = {
        "DISTCB_JOBSET_NAME": "train",
        "DISTCB_REPLICATED_JOB": "workers",
        "DISTCB_JOB_INDEX": "1",
        "DISTCB_JOB_REPLICAS": "2",
        "JOB_COMPLETION_INDEX": "0",
        "DISTCB_WORLD_SIZE": "4",
        "DISTCB_SUBDOMAIN": "net",
    }
    assert config_of(env) == {
        "cluster": {
            "worker": [
                "train-workers-0-0.net:2222",
                "train-workers-0-1.net:2222",
                "train-workers-1-0.net:2222",
                "train-workers-1-1.net:2222",
            ]
        },
        "task": {"type": "worker", "index": 2},
    }


def test_jobset_subdomain_defaults_to_the_jobset_name():
    env = {
        "DISTCB_JOBSET_NAME": "train",
        "DISTCB_REPLICATED_JOB": "workers",
        "DISTCB_JOB_INDEX": "0",
        "JOB_COMPLETION_INDEX": "1",
        "DISTCB_WORLD_SIZE": "2",
    }
    assert detect(env).workers == ("train-workers-0-0.train:2222", "train-workers-0-1.train:2222")


def test_explicit_worker_hosts_serve_any_launcher_and_keep_their_own_ports():
    env = {
        "OMPI_COMM_WORLD_RANK": "1",
        "OMPI_COMM_WORLD_SIZE": "2",
        "DISTCB_WORKER_HOSTS": "node-a:3000, node-b",
    }
    assert config_of(env)["cluster"]["worker"] == ["node-a:3000", "node-b:2222"]
    with pytest.raises(ValueError, match="names 1 workers but the world size is 2"):
        detect(dict(env, DISTCB_WORKER_HOSTS="node-a"))


@pytest.mark.parametrize(
    ("env", "why"),
    [
        (
            {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "n[01-02]"},
            "SLURM_PROCID gives ranks but not the other workers' hosts",
        ),
        (
            {"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2"},
            "OMPI_COMM_WORLD_RANK gives ranks but not",
        ),
        ({"DISTCB_RANK": "0", "DISTCB_WORLD_SIZE": "2"}, "the rank comes from DISTCB_RANK"),
    ],
)
def test_launchers_without_host_lists_do_not_guess(env, why):
    info = detect(env)
    assert info.workers == ()
    assert why in info.hosts_missing
    with pytest.raises(ValueError, match="SlurmClusterResolver"):
        tf_config(info)


# ---------------------------------------------------------------- aliases


def test_aliases_map_names_and_name_port_pairs():
    aliases = host_aliases("svc=127.0.0.1:4000, w-0.sub:2222=127.0.0.1:4001;bare=10.0.0.1")
    assert apply_alias("svc:8765", aliases) == "127.0.0.1:4000"
    assert apply_alias("w-0.sub:2222", aliases) == "127.0.0.1:4001"
    assert apply_alias("w-0.sub:9999", aliases) == "w-0.sub:9999"  # the key names one port
    assert apply_alias("bare:8765", aliases) == "10.0.0.1:8765"  # a host-only value keeps the port
    assert apply_alias("other:1", aliases) == "other:1"
    assert apply_alias("ray:distcb-coordinator", aliases) == "ray:distcb-coordinator"
    assert apply_alias("ws://svc:8765/ws", aliases) == "ws://svc:8765/ws"
    assert apply_alias("bare", aliases) == "10.0.0.1"
    keep = host_aliases("svc:80=10.0.0.9")  # a name:port key with a host-only value
    assert apply_alias("svc:80", keep) == "10.0.0.9:80"
    assert apply_alias("svc:81", keep) == "svc:81"


def test_aliases_apply_to_tf_config_entries():
    env = {
        "JOB_COMPLETION_INDEX": "0",
        "DISTCB_WORLD_SIZE": "2",
        "DISTCB_JOB_NAME": "w",
        "DISTCB_SUBDOMAIN": "s",
        "DISTCB_HOST_ALIASES": "w-0.s=127.0.0.1:5000,w-1.s:2222=127.0.0.1:5001",
    }
    assert detect(env).workers == ("127.0.0.1:5000", "127.0.0.1:5001")


@pytest.mark.parametrize("raw", ["noequals", "=127.0.0.1:1", "a=", "a=127.0.0.1:0", "a:x=b:1"])
def test_malformed_aliases_are_refused(raw):
    with pytest.raises(ValueError, match="DISTCB_HOST_ALIASES|port|host:port"):
        host_aliases(raw)


# ---------------------------------------------------------------- worker_context


@pytest.fixture
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith(("DISTCB_", "JOB_COMPLETION", "OMPI_", "SLURM_")) or name == "TF_CONFIG":
            monkeypatch.delenv(name)
    return monkeypatch


def test_worker_context_auto_sets_tf_config_before_the_strategy_reads_it(clean_env):
    clean_env.setenv("JOB_COMPLETION_INDEX", "1")
    clean_env.setenv("DISTCB_WORLD_SIZE", "2")
    clean_env.setenv("DISTCB_JOB_NAME", "job")
    clean_env.setenv("DISTCB_SUBDOMAIN", "sub")
    clean_env.setenv("DISTCB_ADDRESS", "coord:8765")
    clean_env.setenv("DISTCB_HOST_ALIASES", "coord=127.0.0.1:4100")
    context = worker_context(tf_config="auto")
    assert (context.rank, context.world_size, context.address) == (1, 2, "127.0.0.1:4100")
    assert json.loads(os.environ["TF_CONFIG"]) == {
        "cluster": {"worker": ["job-0.sub:2222", "job-1.sub:2222"]},
        "task": {"type": "worker", "index": 1},
    }


def test_worker_context_auto_keeps_an_existing_tf_config(clean_env):
    clean_env.setenv("DISTCB_RANK", "0")
    clean_env.setenv("DISTCB_WORLD_SIZE", "2")
    clean_env.setenv("TF_CONFIG", '{"set": "by distcb.run"}')
    worker_context(tf_config="auto")
    assert os.environ["TF_CONFIG"] == '{"set": "by distcb.run"}'


def test_worker_context_auto_is_a_no_op_for_one_worker_and_off_by_default(clean_env):
    worker_context(tf_config="auto")
    assert "TF_CONFIG" not in os.environ
    clean_env.setenv("JOB_COMPLETION_INDEX", "0")
    clean_env.setenv("DISTCB_WORLD_SIZE", "2")
    clean_env.setenv("DISTCB_JOB_NAME", "job")
    clean_env.setenv("DISTCB_SUBDOMAIN", "sub")
    worker_context()
    assert "TF_CONFIG" not in os.environ


def test_worker_context_auto_refuses_to_guess(clean_env):
    clean_env.setenv("SLURM_PROCID", "0")
    clean_env.setenv("SLURM_NTASKS", "2")
    with pytest.raises(ValueError, match="SLURM_PROCID gives ranks but not"):
        worker_context(tf_config="auto")
    assert "TF_CONFIG" not in os.environ
    with pytest.raises(ValueError, match="tf_config must be 'auto' or None, received True"):
        worker_context(tf_config=True)


def test_cluster_module_is_dependency_free():
    import ast

    imported = set()
    with open(cluster.__file__) as handle:
        tree = ast.parse(handle.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= {"__future__", "json", "collections", "dataclasses"}, imported

"""A worker without TensorFlow: reads its DISTCB_* environment as a training script does,
connects to its coordinator (wss:// when DISTCB_TLS_CA is set), replays two epochs of logs,
and says so."""

import asyncio

from distcb.testing import ScriptedWorker
from distcb.transport.websocket import connect
from distcb.worker.context import worker_context


async def main() -> None:
    context = worker_context()
    assert context.address is not None
    assert context.token is not None
    connection = await connect(
        context.address, context.token, config=context.config, ca_file=context.tls_ca
    )
    logs = [{"loss": 1.0 + context.rank}, {"loss": 0.5 + context.rank}]
    worker = ScriptedWorker(context.rank, context.world_size, logs, config=context.config)
    try:
        await worker.run(connection)
    finally:
        await connection.close()
    print(f"rank {context.rank} trained {worker.epochs_run} epochs (ca {context.tls_ca})")


asyncio.run(main())

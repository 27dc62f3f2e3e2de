"""A pipeline whose steps fail in the ways `capstan describe` names: out of memory (a 100Mi request enforced on the
worker), a missing module, a command that exits 3, a step past its timeout, and one the queue can never admit."""

import time

import capstan.pipelines as cp


@cp.step(resources={"memory": "100Mi"})
def hog() -> int:
    blocks = []
    for _ in range(100):  # 8 MiB at a time, each page touched: the peak climbs to the limit before it fails
        block = bytearray(8 * 2**20)
        block[::4096] = b"x" * len(block[::4096])
        blocks.append(block)
    return len(blocks)


@cp.step
def broken() -> int:
    import not_a_module  # noqa: F401  # the failure under test: a module that is not installed

    return 1


exits = cp.command_step(["sh", "-c", "echo loading the shards; echo 'fatal: shard 7 is corrupt' >&2; exit 3"],
                        name="exits")


@cp.step(timeout=1)
def slow() -> int:
    time.sleep(60)
    return 1


@cp.step(resources={"gpu": 64})
def greedy() -> int:
    return 1


@cp.step
def fine() -> int:
    print("all good")
    return 1


@cp.pipeline
def failing():
    hog()
    broken()
    exits()
    slow()
    greedy()
    fine()

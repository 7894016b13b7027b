# The node's start-up, behind main.py: config, build (lib/nodebuild.py: board, store, seq,
# app, transport), loop, and the exit codes main.py documents. nodeconfig (and json) are
# dropped from the heap once the config is checked, nodebuild once the node is built: on a
# 64 KB heap every kilobyte of loaded code counts.
import gc
import sys


def _config(path):
    import nodeconfig

    try:
        cfg = nodeconfig.load(path)
    except nodeconfig.ConfigError as e:
        print("E - config %s" % e)
        cfg = None
    for m in ("nodeconfig", "json"):
        if m in sys.modules:
            del sys.modules[m]
    return cfg


def main(argv):
    path = argv[1] if len(argv) > 1 else "/config.json"
    cfg = _config(path)
    # collected here, not in _config, whose frame still holds the module: nodeconfig's code
    # and table (~9 KB on the 64-bit port) are free before build() loads the rest
    gc.collect()
    if cfg is None:
        return 2
    node = build(cfg)
    if isinstance(node, int):
        return node  # it could not start: the exit code main.py documents
    code = finish(node, run(node))
    if code == 7 and getattr(node.board, "record_error", None):
        import machine  # ESP32: the bootloader takes the pending image (fwupdate.py)

        machine.reset()
    return code


# Everything before the loop, for one node config: a Node, or an exit code. main() builds
# one (lib/multinode.py calls nodebuild.build itself for many). The code is
# lib/nodebuild.py's, dropped from the heap again here: it runs once per node.
def build(cfg):
    import nodebuild

    try:
        return nodebuild.build(cfg)
    finally:
        del sys.modules["nodebuild"]


# The loop of a node alone in its process, and what a crash does.
def run(node):
    board = node.board
    dev = node.dev
    code = 0
    try:
        code = node.run()
    except KeyboardInterrupt:
        code = 0
    except Exception as e:
        rec = getattr(board, "record_error", None)
        if not rec:
            raise  # unix: the traceback is the report
        rec(e)  # ESP32: remembered in RTC memory, reported after the reset
        board.log("E %s crash %s" % (dev, board.st["err"]))
        import machine

        machine.reset()
    return code


# After the loop: the `stop` line (main.py, tools/machi_tools/system.py parse it).
def finish(node, code):
    board = node.board
    dev = node.dev
    cfg = node.cfg
    client = node.client
    if cfg["oscore"] or cfg["transport"] == "lora":
        import nodelinks

        nodelinks.log_stats(node)
    stopped = getattr(board, "stopped", None)
    if stopped:
        stopped()
    board.log("I %s stop code=%d taken=%d left=%d rejected=%d dropped=%d sent=%d retx=%d "
              "stray=%d bad=%d neterr=%d" % (dev, code, node.taken, len(node.outbox),
                                             node.rejected, node.outbox.dropped, client.sent,
                                             client.retransmissions, client.stray, client.bad,
                                             client.net_errors))
    return code



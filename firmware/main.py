# Entry point. On the unix port: `micropython firmware/main.py CONFIG.json` (an emulated
# node); on an ESP32 the board runs main.py at boot and the config is /config.json.
#
# Exit codes: 0 done (count reached and every reading acknowledged) or stopped by Ctrl-C /
# SIGINT; 2 bad config; 3 count reached but the outbox did not drain in drain_timeout_s;
# 4 the seq store is damaged (see lib/seqstore.py: refusing to reuse seqs).
# SIGTERM: the unix port has neither `signal` nor `ffi`, so SIGTERM ends the process at
# once (status -15) without a `stop` line; nothing is lost by it (the seq store is
# crash-safe and unacknowledged readings in RAM are lost like at a power cut). Use SIGINT
# for a clean stop.
import sys


def _paths():
    # firmware/ and firmware/lib from this script's own location: no MICROPYPATH needed
    here = sys.argv[0] if sys.argv and sys.argv[0] else ""
    i = here.rfind("/")
    root = here[:i] if i > 0 else ("/" if i == 0 else ".")
    for p in (root + "/lib", root):
        if p not in sys.path:
            sys.path.insert(0, p)
    return root


_APPS = {"env": "apps.env_sensor", "bin": "apps.waste_bin", "light": "apps.streetlight"}


def _board(cfg):
    if sys.platform == "linux" or sys.platform == "darwin":
        from boards.unix import Board
    else:
        from boards.esp32 import Board
    return Board(cfg["state_dir"], cfg["seed"], cfg["scenario"])


def _transport(cfg):
    from transports.udp import UdpTransport

    return UdpTransport(cfg["gateway"]["host"], cfg["gateway"]["port"])


def main(argv):
    import coap_client
    import nodeconfig
    from node import Node
    from outbox import Outbox
    from seqstore import SeqStore, SeqStoreError

    path = argv[1] if len(argv) > 1 else "/config.json"
    try:
        cfg = nodeconfig.load(path)
    except nodeconfig.ConfigError as e:
        print("E - config %s" % e)
        return 2
    dev = cfg["device_id"]
    # the big buffer first, while the heap is not yet fragmented
    outbox = Outbox(cfg["outbox_slots"])
    board = _board(cfg)
    try:
        seqs = SeqStore(cfg["state_dir"], cfg["seq_block"])
    except SeqStoreError as e:
        board.log("E %s seqstore %s" % (dev, e))
        return 4
    if seqs.damaged:
        board.log("W %s seqstore one copy damaged, using the other" % dev)
    app = __import__(_APPS[cfg["type"]], None, None, ["sample"])
    board.wait_transport(board.log)
    co = cfg["coap"]
    client = coap_client.Client(
        _transport(cfg),
        board.clock,
        board.rng,
        ack_timeout_ms=int(co["ack_timeout_s"] * 1000),
        ack_random_factor=co["ack_random_factor"],
        max_retransmit=co["max_retransmit"],
    )
    node = Node(cfg, board, app, client, seqs, outbox)
    code = 0
    try:
        code = node.run()
    except KeyboardInterrupt:
        code = 0
    board.log("I %s stop code=%d taken=%d left=%d rejected=%d dropped=%d sent=%d retx=%d "
              "stray=%d bad=%d neterr=%d" % (dev, code, node.taken, len(node.outbox),
                                             node.rejected, node.outbox.dropped, client.sent,
                                             client.retransmissions, client.stray, client.bad,
                                             client.net_errors))
    return code


_paths()
try:
    _rc = main(sys.argv)
except KeyboardInterrupt:  # Ctrl-C before the loop started
    _rc = 0
sys.exit(_rc)

# The node's set-up behind nodemain.build(): board, store, seq store, app, transport,
# client, Node. A module of its own so its code leaves the heap once the node is built
# (nodemain.build drops it; firmware/README.md, budgets): the loop never runs it again.
import sys

_APPS = {"env": "apps.env_sensor", "bin": "apps.waste_bin", "light": "apps.streetlight"}


def _board(cfg):
    if sys.platform == "linux" or sys.platform == "darwin":
        from boards.unix import Board

        return Board(cfg["state_dir"], cfg["seed"], cfg["scenario"], cfg["clock"])
    from boards.esp32 import Board

    return Board(cfg)


def _store(cfg):
    if cfg["store"] == "ram":
        from outbox import Outbox

        return Outbox(cfg["outbox_slots"], cfg["slot_size"])
    import ring

    return ring.open_ring(cfg["state_dir"] + "/ring", cfg["outbox_slots"], cfg["slot_size"])


def _transport(cfg, board=None):
    # the datagram transport the CoAP client runs over: UDP (Wi-Fi, loopback) or NB-IoT;
    # None for LoRa, whose client (nodelinks.lora_client) drives a radio instead
    t = cfg["transport"]
    if t == "lora":
        return None
    if t == "nbiot":
        import nodelinks  # LoRa and NB-IoT set-up: loaded only for those links

        return nodelinks.nbiot(cfg, board)
    from transports.udp import UdpTransport

    return UdpTransport(cfg["gateway"]["host"], cfg["gateway"]["port"])


# Everything before the loop, for one node config: a Node, or an exit code.
def build(cfg):
    import coap_client
    import ring
    from node import Node
    from seqstore import SeqStore, SeqStoreError

    dev = cfg["device_id"]
    try:
        board = _board(cfg)  # makes state_dir
    except ValueError as e:  # the board section (boards/esp32.py ConfigError, a scenario)
        print("E - config %s" % e)
        return 2
    if getattr(board, "safe_mode", False):
        # crashed SAFE_AFTER times in a row (boards/bootstate.py): stay up without the app,
        # REPL and files reachable, until someone fixes it (or power-cycles it)
        board.log("E %s safe-mode crashes=%d err=%s" % (dev, board.st["crashes"],
                                                        board.st["err"]))
        return 6
    try:
        outbox = _store(cfg)
    except ring.RingError as e:
        board.log("E %s ring %s" % (dev, e))
        return 5
    try:
        seqs = SeqStore(cfg["state_dir"], cfg["seq_block"])
    except SeqStoreError as e:
        board.log("E %s seqstore %s" % (dev, e))
        return 4
    if seqs.damaged:
        board.log("W %s seqstore one copy damaged, using the other" % dev)
    top = outbox.top() if hasattr(outbox, "top") else -1
    if top >= seqs.peek():
        # the ring holds seqs the store does not cover (a repaired or replaced seq store):
        # the ring proves they were used, so counting resumes above them
        import seqstore

        board.log("W %s seqstore mark %d below the ring's seq %d: raised" % (dev, seqs.peek(),
                                                                         top))
        seqstore.write_mark(cfg["state_dir"], top + 1)
        seqs = SeqStore(cfg["state_dir"], cfg["seq_block"])
    mod = __import__(_APPS[cfg["type"]], None, None, ["App"])
    try:
        app = mod.App(board, cfg["app"])
    except (ValueError, TypeError) as e:
        print("E - config %s" % e)
        return 2
    restore = getattr(board, "restore_app", None)
    if restore:
        restore(app)  # state kept in RTC memory across deep sleep (ESP32)
    board.wait_transport(board.log)
    co = cfg["coap"]
    tr = _transport(cfg, board)
    if cfg["oscore"]:
        import oscore_transport

        tr = oscore_transport.wrap(tr, cfg["oscore"], cfg["state_dir"], cfg["seq_block"])
    if tr is None:
        import nodelinks

        client = nodelinks.lora_client(cfg, board)
    else:
        client = coap_client.Client(
            tr,
            board.clock,
            board.rng,
            ack_timeout_ms=int(co["ack_timeout_s"] * 1000),
            ack_random_factor=co["ack_random_factor"],
            max_retransmit=co["max_retransmit"],
        )
    node = Node(cfg, board, app, client, seqs, outbox)
    if tr is not None and cfg["type"] == "light":  # always on: commands pushed to /c
        import coap_server

        coap_server.attach(node)
    if tr is None:
        client.now = node.time.now  # also the time learned from acks: a late reading's age
    node.fw_boot()  # A/B slots: a trial image confirms itself on the first ack (node.py)
    return node

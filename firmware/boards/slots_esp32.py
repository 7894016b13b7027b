# A/B firmware slots on an ESP32: the two OTA app partitions (ota_0, ota_1) through
# esp32.Partition, and the ESP-IDF bootloader's rollback. The same contract as
# boards/slots_unix.py (read it there); what differs:
#   - needs a MicroPython build with an OTA partition table (the ESP32_GENERIC "OTA"
#     variant) and CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE (otherwise
#     mark_app_valid_cancel_rollback raises OSError(-261): confirm() lets that through,
#     an update without rollback is not one we accept)
#   - the bootloader does the switch and the rollback: set_boot() makes the new partition
#     boot next in state PENDING_VERIFY; a reset before mark_app_valid_cancel_rollback()
#     boots the old one again. boot() only tells which happened, from what set_pending left
#     in NVS (the partition label it set) compared with the partition that is running.
#   - the image is a whole MicroPython firmware (.bin with the app modules frozen in), and
#     sectors are erased and written by writeblocks(i, buf) (one erase block = 4096 bytes,
#     a short last sector is padded with 0xFF)
#   - versions, floor and bad live in NVS (namespace "machi_fw"), committed at once.
# Written to the MicroPython esp32 docs; it cannot run on the unix port and has not run on
# hardware yet (docs/security.md "Firmware updates").
import esp32

SECTOR = 4096
_NS = "machi_fw"


def _label(part):
    return part.info()[4]


class Slots:
    def __init__(self, nvs=None):
        # the stub takes only a label (str); the port also takes BOOT and RUNNING
        self._run = esp32.Partition(esp32.Partition.RUNNING)  # type: ignore[arg-type]
        self._next = self._run.get_next_update()
        self._nvs = nvs or esp32.NVS(_NS)
        self.capacity = self._next.info()[3]
        self._trial = False

    def _get(self, key, default=0):
        try:
            return self._nvs.get_i32(key)
        except OSError:
            return default

    def _pending_label(self):
        buf = bytearray(16)
        try:
            n = self._nvs.get_blob("pend", buf)
        except OSError:
            return None
        return bytes(buf[:n]).decode()

    def _set(self, **kv):
        for k, v in kv.items():
            if v is None:
                try:
                    self._nvs.erase_key(k)
                except OSError:
                    pass
            elif isinstance(v, str):
                self._nvs.set_blob(k, v.encode())
            else:
                self._nvs.set_i32(k, v)
        self._nvs.commit()

    # ---- the bootloader already acted: what did it do?

    def boot(self):
        pend = self._pending_label()
        if pend is None:
            return "normal"
        if pend == _label(self._run):
            self._trial = True  # PENDING_VERIFY: confirm() or the bootloader rolls back
            return "trial"
        if pend == _label(esp32.Partition(esp32.Partition.BOOT)):  # type: ignore[arg-type]
            return "normal"  # set_boot() done, no hardware reset since (a soft reset)
        # set_boot() named another partition, yet this one runs: the bootloader rolled back
        # (the new image reset before it confirmed itself, or it did not boot at all)
        self._set(bad=self._get("pver"), pend=None)
        return "rolled-back"

    # ---- queries (slot numbers: 0 = the running partition, 1 = the other)

    def running(self):
        return 0

    def target(self):
        return 1

    def trial(self):
        return self._trial

    def version(self):
        return self._get("pver") if self._trial else self._get("ver")

    def floor(self):
        return self._get("floor")

    def bad(self):
        return self._get("bad")

    # ---- contents

    def write(self, slot, index, buf):
        if slot != 1:
            raise ValueError("refusing to write the running partition")
        if self._pending_label() is not None and not self._trial:
            self._set(pend=None)  # a pending image is being overwritten
            self._run.set_boot()
        if len(buf) < SECTOR:
            b = bytearray(b"\xff" * SECTOR)
            b[: len(buf)] = buf
            buf = b
        self._next.writeblocks(index, buf)  # erases the block, then writes it

    def read(self, slot, offset, buf):
        part = self._next if slot == 1 else self._run
        part.readblocks(offset // SECTOR, buf, offset % SECTOR)
        return len(buf)

    # ---- the update

    def set_pending(self, slot, version):
        if slot != 1:
            raise ValueError("the running partition cannot be the next one")
        self._set(pver=version, pend=_label(self._next))
        self._next.set_boot()

    def confirm(self):
        if not self._trial:
            return False
        esp32.Partition.mark_app_valid_cancel_rollback()
        v = self._get("pver")
        self._set(ver=v, floor=max(v, self._get("floor")), pend=None)
        self._trial = False
        return True

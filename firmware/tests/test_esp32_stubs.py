"""The ESP32 code uses only what MicroPython's ESP32 port really has.

The board, the OTA slots and the pin drivers cannot run here (no `machine`, `network` or
`esp32` on the unix port); their tests inject fakes, and a fake happily grows a method the
real port lacks. So this test reads the firmware's source (AST) and checks every
`machine.X`, `machine.X.Y`, `network.X`, `esp32.X`, `time.X` it uses, the methods it calls
on objects it made from those classes (`sta = network.WLAN(...)`, `sta.isconnected()`), on
what the board passes to the drivers (`self._i2c`, `uart`, `self._pin`, ...), and the
keyword arguments of those calls (`UART(baudrate=...)`, not `baud=`) against
micropython-esp32-stubs, the typed stubs generated from the ESP32 port's firmware
(a `test` extra). Positional arguments and types are not checked.
"""

from __future__ import annotations

import ast
import importlib.metadata
from dataclasses import dataclass, field
from pathlib import Path

import pytest

FIRMWARE = Path(__file__).resolve().parents[1]
# the files that talk to the port's hardware modules
FILES = ["boards/esp32.py", "boards/slots_esp32.py", "drivers/pir.py", "drivers/ultrasonic.py",
         "drivers/dimmer.py", "drivers/framesync.py", "drivers/bme280.py", "drivers/bh1750.py",
         "drivers/sht3x.py", "drivers/sht4x.py", "drivers/vl53l0x.py", "drivers/ina219.py",
         "drivers/pms5003.py", "drivers/sds011.py"]
MODULES = ("machine", "network", "esp32", "time")
# what boards/esp32.py hands the drivers: attribute or parameter name -> stub class/module
PASSED_IN = {"_i2c": "machine.I2C", "i2c": "machine.I2C", "_uart": "machine.UART",
             "uart": "machine.UART", "_pwm": "machine.PWM", "pwm": "machine.PWM",
             "_pin": "machine.Pin", "pin": "machine.Pin", "_trig": "machine.Pin",
             "_echo": "machine.Pin", "_clock": "time", "clock": "time"}


def stub_root() -> Path:
    try:
        dist = importlib.metadata.distribution("micropython-esp32-stubs")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("micropython-esp32-stubs is not installed: pip install -e '.[test]'")
    root = Path(str(dist.locate_file("")))
    if not (root / "machine.pyi").exists():
        pytest.fail(f"micropython-esp32-stubs installed, but no machine.pyi under {root}")
    return root


@dataclass
class StubClass:
    module: str
    node: ast.ClassDef


@dataclass
class Stubs:
    """Stub modules parsed on demand, names resolved through their imports."""

    root: Path
    _trees: dict[str, dict[str, ast.AST]] = field(default_factory=dict)
    _imports: dict[str, dict[str, tuple[str, str]]] = field(default_factory=dict)

    def _load(self, mod: str) -> bool:
        if mod in self._trees:
            return True
        parts = mod.split(".")
        for cand in (self.root.joinpath(*parts).with_suffix(".pyi"),
                     self.root.joinpath(*parts, "__init__.pyi")):
            if cand.exists():
                break
        else:
            return False
        defs: dict[str, ast.AST] = {}
        imports: dict[str, tuple[str, str]] = {}
        for node in ast.parse(cand.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef | ast.FunctionDef):
                defs.setdefault(node.name, node)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                defs[node.target.id] = node
            elif isinstance(node, ast.Assign):
                for t in node.targets:
                    if isinstance(t, ast.Name):
                        defs[t.id] = node
            elif isinstance(node, ast.ImportFrom) and node.module:
                for a in node.names:
                    imports[a.asname or a.name] = (node.module, a.name)
        self._trees[mod] = defs
        self._imports[mod] = imports
        return True

    def resolve(self, mod: str, name: str, depth: int = 0) -> tuple[str, ast.AST] | None:
        """(defining module, node) of `name` as seen from stub module `mod`."""
        if depth > 5 or not self._load(mod):
            return None
        if name in self._trees[mod]:
            return mod, self._trees[mod][name]
        if name in self._imports[mod]:
            src, orig = self._imports[mod][name]
            return self.resolve(src, orig, depth + 1)
        return None

    def cls(self, mod: str, name: str) -> StubClass | None:
        """The stub class `name` as seen from `mod`, or None if it is not a class."""
        found = self.resolve(mod, name)
        if found is None or not isinstance(found[1], ast.ClassDef):
            return None
        return StubClass(found[0], found[1])

    def overloads(self, mod: str, name: str) -> list[ast.FunctionDef]:
        """Every top-level `def name` of a module (overloads included)."""
        self._load(mod)
        path = self.root.joinpath(*mod.split(".")).with_suffix(".pyi")
        if not path.exists():
            return []
        tree = ast.parse(path.read_text(encoding="utf-8"))
        return [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name]

    def members(self, cls: StubClass, depth: int = 0) -> tuple[dict[str, list[ast.AST]], bool]:
        """name -> definitions in the class and its bases; and whether every base resolved."""
        out: dict[str, list[ast.AST]] = {}
        complete = True

        def collect(body: list[ast.stmt]) -> None:
            for n in body:
                if isinstance(n, ast.FunctionDef | ast.ClassDef):
                    out.setdefault(n.name, []).append(n)
                elif isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name):
                    out.setdefault(n.target.id, []).append(n)
                elif isinstance(n, ast.Assign):
                    for t in n.targets:
                        if isinstance(t, ast.Name):
                            out.setdefault(t.id, []).append(n)
                elif isinstance(n, ast.If):
                    collect(n.body)
                    collect(n.orelse)

        collect(cls.node.body)
        for base in cls.node.bases:
            bname = base.id if isinstance(base, ast.Name) else None
            if bname in ("object", "Protocol", "Generic", None):
                continue
            found = self.resolve(cls.module, bname)
            if found is None or not isinstance(found[1], ast.ClassDef) or depth > 5:
                complete = False
                continue
            sub, sub_complete = self.members(StubClass(found[0], found[1]), depth + 1)
            complete = complete and sub_complete
            for k, v in sub.items():
                out.setdefault(k, []).extend(v)
        return out, complete


# what an expression in the firmware is known to be
@dataclass(frozen=True)
class Kind:
    what: str  # "module" | "class" | "instance"
    module: str
    name: str = ""

    def label(self) -> str:
        return self.module + ("." + self.name if self.name else "")


def _params(funcs: list[ast.AST]) -> tuple[set[str], bool]:
    names: set[str] = set()
    var_kw = False
    for f in funcs:
        if not isinstance(f, ast.FunctionDef):
            return set(), True  # not a function (an alias, a callable attribute): unknown
        a = f.args
        names.update(x.arg for x in a.posonlyargs + a.args + a.kwonlyargs)
        var_kw = var_kw or a.kwarg is not None
    return names, var_kw


class Checker:
    """Walks one firmware file; collects what it checked and what the stubs lack."""

    def __init__(self, stubs: Stubs, path: str, passed_in: dict[str, str] | None = None):
        self.stubs = stubs
        self.path = path
        self.vars: dict[str, Kind] = {}  # "name" or "self.attr" -> Kind
        self.passed = passed_in or {}
        self.checked: set[str] = set()
        self.errors: list[str] = []

    # -- what is this expression?
    def key(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return node.id
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id == "self":
            return "self." + node.attr
        return None

    def _passed(self, name: str) -> Kind | None:
        target = self.passed.get(name)
        if target is None:
            return None
        mod, _, cls = target.partition(".")
        return Kind("instance", mod, cls) if cls else Kind("module", mod)

    def kind(self, node: ast.AST) -> Kind | None:
        k = self.key(node)
        if k is not None and k in self.vars:
            return self.vars[k]
        if isinstance(node, ast.Name):
            return self._passed(node.id)
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "self":
                return self._passed(node.attr)
            base = self.kind(node.value)
            if base is None:
                return None
            if base.what == "module":
                found = self.stubs.resolve(base.module, node.attr)
                if found and isinstance(found[1], ast.ClassDef):
                    return Kind("class", found[0], found[1].name)
            return None
        if isinstance(node, ast.Call):
            f = self.kind(node.func)
            if f is not None and f.what == "class":
                return Kind("instance", f.module, f.name)
            if isinstance(node.func, ast.Attribute):
                owner = self.kind(node.func.value)
                if owner is not None and owner.what == "instance":
                    return self._returns(owner, node.func.attr)
            return None
        if isinstance(node, ast.BoolOp):
            kinds = {self.kind(v) for v in node.values} - {None}
            return kinds.pop() if len(kinds) == 1 else None
        if isinstance(node, ast.IfExp):
            kinds = {self.kind(node.body), self.kind(node.orelse)} - {None}
            return kinds.pop() if len(kinds) == 1 else None
        return None

    def _returns(self, owner: Kind, meth: str) -> Kind | None:
        found = self.stubs.cls(owner.module, owner.name)
        if found is None:
            return None
        members, _ = self.stubs.members(found)
        for f in members.get(meth, []):
            if isinstance(f, ast.FunctionDef) and isinstance(f.returns, ast.Name):
                r = self.stubs.cls(found.module, f.returns.id)
                if r is not None:
                    return Kind("instance", r.module, r.node.name)
        return None

    # -- checks
    def attr(self, node: ast.Attribute) -> None:
        owner = self.kind(node.value)
        if owner is None:
            return
        where = f"{self.path}:{node.lineno}"
        name = f"{owner.label()}.{node.attr}"
        if owner.what == "module":
            self.checked.add(name)
            if self.stubs.resolve(owner.module, node.attr) is None:
                self.errors.append(f"{where}: {name} is not in the ESP32 port")
            return
        found = self.stubs.cls(owner.module, owner.name)
        if found is None:
            return
        members, complete = self.stubs.members(found)
        self.checked.add(name)
        if node.attr not in members and complete:
            self.errors.append(f"{where}: {name} is not in the ESP32 port")

    def call(self, node: ast.Call) -> None:
        if not node.keywords or any(k.arg is None for k in node.keywords):
            return
        target = self.kind(node.func)
        funcs: list[ast.AST] = []
        label = ""
        if target is not None and target.what == "class":
            found = self.stubs.cls(target.module, target.name)
            if found is not None:
                members, _ = self.stubs.members(found)
                funcs = members.get("__init__", [])
                label = target.label() + "()"
        elif isinstance(node.func, ast.Attribute):
            owner = self.kind(node.func.value)
            if owner is not None and owner.what == "module":
                funcs = list(self.stubs.overloads(owner.module, node.func.attr))
                label = f"{owner.label()}.{node.func.attr}()"
            elif owner is not None and owner.what == "instance":
                found = self.stubs.cls(owner.module, owner.name)
                if found is not None:
                    members, _ = self.stubs.members(found)
                    funcs = members.get(node.func.attr, [])
                    label = f"{owner.label()}.{node.func.attr}()"
        if not funcs:
            return
        params, var_kw = _params(funcs)
        for kw in node.keywords:
            self.checked.add(f"{label} {kw.arg}=")
            if not var_kw and kw.arg not in params:
                self.errors.append(f"{self.path}:{node.lineno}: {label} has no keyword "
                                   f"{kw.arg!r} (it takes {', '.join(sorted(params - {'self'}))})")

    def run(self, source: str) -> None:
        tree = ast.parse(source)
        for node in ast.walk(tree):  # imports anywhere (network is imported in a method)
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in MODULES:
                        self.vars[a.asname or a.name] = Kind("module", a.name)
        # assignments in source order: what a name or self.attr holds
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                k = self.key(node.targets[0])
                kind = self.kind(node.value)
                if k is not None and kind is not None:
                    self.vars[k] = kind
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                self.attr(node)
            elif isinstance(node, ast.Call):
                self.call(node)


def check(stubs: Stubs, path: str, source: str) -> Checker:
    c = Checker(stubs, path, PASSED_IN if path.startswith("drivers/") else None)
    c.run(source)
    return c


@pytest.fixture(scope="module")
def stubs() -> Stubs:
    return Stubs(stub_root())


def test_firmware_uses_only_what_the_esp32_port_has(stubs: Stubs) -> None:
    errors: list[str] = []
    checked: set[str] = set()
    for rel in FILES:
        c = check(stubs, rel, (FIRMWARE / rel).read_text(encoding="utf-8"))
        errors += c.errors
        checked |= c.checked
    assert not errors, "\n".join(errors)
    # not vacuous: the calls that matter were among the ones checked
    must = {"machine.WDT", "machine.WDT() timeout=", "machine.WDT.feed", "machine.RTC.memory",
            "machine.RTC.datetime", "machine.reset_cause", "machine.deepsleep",
            "machine.I2C() freq=", "machine.UART() baudrate=", "machine.PWM() duty_u16=",
            "machine.ADC.ATTN_11DB", "machine.ADC.read_uv", "machine.ADC.atten",
            "machine.Pin.PULL_UP", "machine.Pin.irq", "machine.Pin.IRQ_RISING",
            "machine.time_pulse_us", "network.WLAN", "network.STA_IF", "network.WLAN.connect",
            "network.WLAN.isconnected", "network.WLAN.status", "network.WLAN.active",
            "esp32.Partition.RUNNING", "esp32.Partition.get_next_update",
            "esp32.Partition.mark_app_valid_cancel_rollback", "esp32.Partition.writeblocks",
            "esp32.Partition.readblocks", "esp32.Partition.set_boot", "esp32.NVS.get_blob",
            "esp32.NVS.commit", "machine.I2C.readfrom_mem_into", "machine.I2C.writeto",
            "machine.UART.readinto", "machine.UART.write", "machine.PWM.duty_u16",
            "time.ticks_add", "time.ticks_diff", "time.sleep_us", "time.gmtime"}
    assert must <= checked, sorted(must - checked)


BROKEN = '''
import machine
import network
import esp32


class B:
    def __init__(self):
        self._wdt = machine.WDT(timeout=5000, autofeed=True)
        self.uart = machine.UART(2, baud=9600, tx=17, rx=16)
        sta = network.WLAN(network.STA_IF)
        sta.isconected()
        self._p = esp32.Partition(esp32.Partition.RUNNING).get_next_update()
        self._p.erase()
        p = machine.Pin
        self.pin = p(4, p.IN, p.PULL_SIDEWAYS)
        self.pin.toggle()
        machine.Pinn(3)
        machine.lightsleep(10)
'''


def test_the_check_catches_what_the_port_lacks(stubs: Stubs) -> None:
    c = check(stubs, "broken.py", BROKEN)
    text = "\n".join(c.errors)
    for wrong in ("machine.WDT() has no keyword 'autofeed'", "machine.UART() has no keyword 'baud'",
                  "network.WLAN.isconected is not", "esp32.Partition.erase is not",
                  "machine.Pin.PULL_SIDEWAYS is not", "machine.Pinn is not"):
        assert wrong in text, text
    assert len(c.errors) == 6, text  # toggle() and lightsleep() exist: no false alarms

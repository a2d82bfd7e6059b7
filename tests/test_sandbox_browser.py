"""The CDS Hooks sandbox in headless Chromium, against the stack `make sandbox` starts (sandbox/stack.py).

The official sandbox (the build in ../shared/cds-hooks/sandbox-build, served on loopback) talks to a real
`cds-service serve` (authentication on, the sandbox issuer preset, CORS for the sandbox's origin) and to
the demo FHIR server, as a clinician's browser would. Everything is read off the sandbox's screen: the
cards it renders (summary, indicator colour), its service list, its buttons. The one step that is not a
click is choosing the drug, since its picker offers no anti-CD20 product: that runs the same console
snippet `make sandbox` prints. Feedback is checked in the store, through `cds-service report`.

Debian's Chromium is installed when missing (as root); if it cannot be, the tests are skipped saying so.
Screenshots go to test-artifacts/sandbox/.
"""
from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import pytest
import requests
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, Response, expect, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from conftest import ROOT
from sandbox import demo
from sandbox.stack import SANDBOX_BUILD, Ports, Stack
from security_support import BIN
from tests import debian

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = ROOT / "test-artifacts" / "sandbox"
SANDBOX_KEY_IDS = {k["kid"] for k in json.loads((ROOT / "config" / "sandbox-jwks.json").read_text())["keys"]}
CARD = '[class*="card-list__decision-card"]'
PATIENTS = {p.patient_id: p for p in demo.PATIENTS}
SERVICE_FOR = {"patient-view": "cd20-patient-view", "rx-view": "cd20-order-select", "rx-sign": "cd20-order-sign"}
# Console errors of the sandbox's own: its default service host (unreachable offline; a failure of our
# discovery is caught by the request checks instead), and files its build does not ship.
NOT_OURS = "https://sandbox-services.cds-hooks.org/"
DEFAULT_DISCOVERY_FAILED = "Could not retrieve any services at discovery endpoint"
NOT_IN_THE_BUILD = {"styles.css", "favicon.ico"}
PREMEDICATION = "No premedication order for {drug}: missing a corticosteroid"
DOSE_IN_PILLS = "Ordered dose (a dose in pills) cannot be checked against the label's"


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not (SANDBOX_BUILD / "index.html").is_file():
        pytest.skip(f"the CDS Hooks sandbox build is not at {SANDBOX_BUILD}")
    if not CHROMIUM.exists():
        try:
            debian.install("chromium")
        except (pytest.fail.Exception, subprocess.CalledProcessError) as e:
            pytest.skip(f"headless Chromium (Debian's chromium, {CHROMIUM}) is missing and could not be installed: {e}")
    return CHROMIUM


@pytest.fixture(scope="module")
def stack(chromium, tmp_path_factory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("sandbox")
    with Stack(Ports(0, 0, 0), f"sqlite:///{home / 'cds.db'}", home / "service.log") as running:
        yield running


@pytest.fixture(scope="module")
def browser(chromium) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(chromium), args=LAUNCH_ARGS)
        yield launched
        launched.close()


@dataclass
class Call:
    """A call the page made to the service, as the browser saw it."""

    method: str
    url: str
    status: int
    authorization: str
    allowed_origin: str


class Sandbox:
    """One sandbox tab (a fresh browser profile: nothing carried over), and what it saw of our servers."""

    def __init__(self, browser: Browser, stack: Stack) -> None:
        self.stack = stack
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page: Page = self.context.new_page()
        self.calls: list[Call] = []
        self.problems: list[str] = []
        self.page.on("console", self._console)
        self.page.on("requestfailed", self._failed)
        self.page.on("response", self._response)

    def open(self, patient: demo.DemoPatient, screen: str) -> None:
        """Open the sandbox on this patient and screen and wait for its first call to us."""
        first = "/cds-services" if screen == "rx-sign" else f"/cds-services/{SERVICE_FOR[screen]}"
        self.answer(first, lambda: self.page.goto(self.stack.sandbox_url(patient, self.stack.ui_url, screen)))

    def order(self, drug: str, screen: str) -> None:
        """Choose the drug; Rx View then asks order-select, and in Rx Sign the clinician signs (order-sign)."""
        service = f"/cds-services/{SERVICE_FOR[screen]}"
        medication = self.page.locator("input[name=medication-input]")
        expect(medication).to_be_visible()
        choose = partial(self.page.evaluate, demo.choose_drug(demo.MEDICATIONS[drug]))
        if screen == "rx-view":
            self.answer(service, choose)
            return
        choose()
        expect(medication).to_have_value(demo.MEDICATIONS[drug]["name"])
        self.answer(service, self.page.get_by_role("button", name="Sign Order").click)

    def answer(self, path: str, action: Callable[[], Any]) -> Response:
        """Do something that makes the page call the service at `path`, and wait for the answer."""
        try:
            with self.page.expect_response(self.stack.service_url + path, timeout=30000) as answered:
                action()
        except PlaywrightTimeout:
            raise AssertionError(f"the page got no answer from {path}; what the browser reported: "
                                 f"{self.problems}") from None
        return answered.value

    def cards(self, count: int) -> list[tuple[str, str]]:
        """(indicator, summary) of each card on screen, once `count` are shown."""
        cards = self.page.locator(CARD)
        expect(cards).to_have_count(count)
        shown = []
        for card in cards.all():
            indicator = re.search(r"alert-(critical|warning|info)", card.get_attribute("class") or "")
            shown.append((indicator.group(1) if indicator else "none", card.locator("p").first.inner_text().strip()))
        return shown

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def assert_healthy(self) -> None:
        """No error from our side, and every call to the service went through CORS with a sandbox JWT."""
        assert self.problems == []
        assert self.calls, "the page never called the service"
        for call in self.calls:
            assert call.allowed_origin == self.stack.ui_url, call
            scheme, _, token = call.authorization.partition(" ")
            assert scheme == "Bearer" and _kid(token) in SANDBOX_KEY_IDS, call

    def _ours(self, text: str) -> bool:
        return self.stack.service_url in text or self.stack.fhir_url.rsplit("/", 2)[0] in text

    def _console(self, message: ConsoleMessage) -> None:
        """Every console error counts, but for the sandbox's own, which have nothing to do with us."""
        where = message.location.get("url", "")
        foreign = (where.startswith(NOT_OURS) or message.text.startswith(DEFAULT_DISCOVERY_FAILED)
                   or where in {f"{self.stack.ui_url}/{name}" for name in NOT_IN_THE_BUILD})
        if message.type == "error" and not foreign:
            self.problems.append(f"console error: {message.text} ({where})")

    def _failed(self, request: Request) -> None:
        if self._ours(request.url):
            self.problems.append(f"{request.method} {request.url} failed: {request.failure}")

    def _response(self, response: Response) -> None:
        if not self._ours(response.url):
            return
        if response.status >= 400:
            self.problems.append(f"{response.request.method} {response.url} answered {response.status}")
        if response.url.startswith(self.stack.service_url):
            self.calls.append(Call(response.request.method, response.url, response.status,
                                   response.request.headers.get("authorization", ""),
                                   response.headers.get("access-control-allow-origin", "")))


@pytest.fixture
def sandbox(browser, stack) -> Iterator[Sandbox]:
    tab = Sandbox(browser, stack)
    yield tab
    tab.context.close()


def _kid(token: str) -> str:
    header = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))).get("kid", "")


REPORT_COLUMNS = ("rule", "indicator", "issued", "feedback", "accepted", "overridden", "override rate", "reasons")


def _report(stack: Stack) -> dict[str, dict[str, str]]:
    """`cds-service report` on the stack's feedback store: each rule's line, by column."""
    env = {**os.environ, "CDS_DATABASE_URL": stack.database_url}
    done = subprocess.run([str(BIN / "cds-service"), "report"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    feedback_table = done.stdout.split("\n\n")[0].splitlines()[2:]  # the live/silent and weekly tables follow
    rows = [dict(zip(REPORT_COLUMNS, re.split(r"\s{2,}", line.strip()))) for line in feedback_table]
    return {row["rule"]: row for row in rows}


def _feedback(stack: Stack, rule: str, **expected: str) -> None:
    """Wait until the report shows this feedback for the rule (issued cards are written in the background)."""
    deadline, row = time.monotonic() + 15, {}
    while time.monotonic() < deadline:
        row = _report(stack).get(rule, {})
        if all(row.get(column.replace("_", " ")) == value for column, value in expected.items()):
            return
        time.sleep(0.5)
    raise AssertionError(f"expected {expected} for {rule} in the feedback store; the report says {row}")


def test_the_sandbox_lists_our_three_services(sandbox, stack):
    sandbox.open(PATIENTS["example-clean-1"], "patient-view")
    sandbox.page.locator("button:has([data-testid=SettingsIcon])").click()
    sandbox.page.get_by_role("menuitem", name="Configure CDS Services").click()
    dialog = sandbox.page.get_by_role("dialog")
    expect(dialog).to_contain_text("cd20-patient-view")
    listed = set(re.findall(re.escape(stack.service_url) + r"/cds-services/([\w-]+)", dialog.inner_text()))
    assert listed == {"cd20-order-select", "cd20-order-sign", "cd20-patient-view"}
    sandbox.screenshot("discovery")
    sandbox.assert_healthy()


def test_patient_view_shows_monitoring_due_and_an_accepted_suggestion_reaches_the_store(sandbox, stack):
    sandbox.open(PATIENTS["example-hbv-dna-3"], "patient-view")
    assert sandbox.cards(1) == [("warning", "Anti-HBc positive, no HBV prophylaxis and no HBV DNA in 90 days: "
                                            "check HBV DNA for Ocrevus.")]
    sandbox.screenshot("patient-view")
    answer = sandbox.answer("/cds-services/cd20-patient-view/feedback",
                            sandbox.page.get_by_role("button", name="Order Hepatitis B virus DNA").click)
    assert answer.status == 200
    _feedback(stack, "hbv-dna-monitoring", feedback="1", accepted="1", overridden="0")
    sandbox.assert_healthy()


# (patient, screen, drug, the cards expected on screen: indicator and the start of the summary), most urgent first
ORDERS = [
    ("example-hbv-1", "rx-view", "ocrelizumab",
     [("critical", "Active hepatitis B: latest HBsAg ("), ("info", DOSE_IN_PILLS)]),
    ("example-liver-1", "rx-sign", "ocrelizumab",
     [("critical", "Possible drug-induced liver injury: ALT 5.09 × ULN with bilirubin 2.83 × ULN. Hold Ocrevus."),
      ("info", PREMEDICATION.format(drug="Ocrevus")), ("info", DOSE_IN_PILLS)]),
    ("example-clean-1", "rx-sign", "ocrelizumab",
     [("info", PREMEDICATION.format(drug="Ocrevus")), ("info", DOSE_IN_PILLS)]),
    ("example-neutro-2", "rx-view", "rituximab", [("critical", "Neutropenia, CTCAE grade 4: ANC 0.42 ×10⁹/L")]),
    ("example-igg-1", "rx-sign", "rituximab",
     [("warning", "Low IgG: 520 mg/dL (reported as 5.2 g/L)"), ("info", PREMEDICATION.format(drug="rituximab"))]),
]


@pytest.mark.parametrize("patient, screen, drug, expected", ORDERS, ids=[f"{o[1]}-{o[2]}-{o[0]}" for o in ORDERS])
def test_ordering_shows_the_expected_cards(sandbox, patient, screen, drug, expected):
    sandbox.open(PATIENTS[patient], screen)
    sandbox.order(drug, screen)
    shown = sandbox.cards(len(expected))
    sandbox.screenshot(f"{screen}-{drug}-{patient}")
    assert [indicator for indicator, _ in shown] == [indicator for indicator, _ in expected]
    for (_, summary), (_, start) in zip(shown, expected):
        assert summary.startswith(start), (summary, start)
    sandbox.assert_healthy()


def test_dismissing_a_card_with_a_reason_reaches_the_store(sandbox, stack):
    sandbox.open(PATIENTS["example-hbv-1"], "rx-sign")
    sandbox.order("ocrelizumab", "rx-sign")
    critical = sandbox.page.locator(CARD).filter(has_text="Active hepatitis B")
    expect(critical).to_have_count(1)
    critical.get_by_role("button", name="select dismiss reason").click()
    answer = sandbox.answer("/cds-services/cd20-order-sign/feedback",
                            sandbox.page.get_by_role("menuitem", name="Reviewed with a specialist; proceeding").click)
    assert answer.status == 200
    expect(critical).to_have_count(0)  # dismissed cards leave the screen
    _feedback(stack, "hbv-active", feedback="1", accepted="0", overridden="1", reasons="specialist-reviewed (1)")
    sandbox.assert_healthy()


def test_the_service_refuses_a_call_without_the_sandbox_token(stack):
    """Authentication really is on: the calls above got through on the sandbox's own JWTs."""
    assert requests.get(f"{stack.service_url}/cds-services", timeout=10).status_code == 401

"""Writes ``tests/compliance/golden.jsonl``: the gate's golden cases, written from the spec.

Run ``python -m tests.compliance.make_golden`` after editing a case. Every expectation here
is stated by hand from COMPLIANCE.md (``../shared/`` beside the repository; rule and source
in ``why``); only the conversion of a local wall-clock time to UTC is computed (with
zoneinfo), so that the case text can say "20:59 EDT" and mean it.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

OUT = Path(__file__).resolve().parent / "golden.jsonl"

NY, FL, FL_SPLIT, FL_OVERLAY = "+12127365000", "+13053581234", "+18504321234", "+14485551234"
OK_, MD, WA, TX, TX_EP = "+14055551234", "+14105551234", "+12065551234", "+12145551234", "+19155551234"
AL, LA, MS, CT, KY, RI, MA = "+12055551234", "+15045551234", "+16015551234", "+12035551234", "+15025551234", "+14015551234", "+16175551234"
IN_SPLIT, IN_OVERLAY, AZ_NAVAJO, AK, HI, PR = "+18124221234", "+19305551234", "+19285551234", "+19072761234", "+18085861234", "+17875551234"
CANADA, UK, TOLL_FREE, PREMIUM = "+14165551234", "+447911123456", "+18005551234", "+19005551234"
PUB_LINE = "+18885550100"
BUYER, OTHER = "buyer_acme", "buyer_zen"
DISCLOSURE = ("By clicking Submit I agree that Acme Insurance may call and text me at the number provided, including "
              "by autodialer and prerecorded voice, for marketing. Consent is not a condition of purchase.")

TCPA_HOURS = "47 CFR 64.1200(c)(1); 16 CFR 310.4(c) — https://www.nwdebtresolution.com/post/telephone-consumer-protection-act-call-time-restrictions"
FL_SRC = "Fla. Stat. 501.616(6)(a)-(b) — https://flsenate.gov/Session/Bill/2021/1120/BillText/Filed/HTML"
OK_SRC = "15 O.S. 775C (Telephone Solicitation Act of 2022) — https://dnc.dreamhosters.com/?p=1309"
MD_SRC = "Stop the Spam Calls Act of 2023 — https://www.dnc.com/index.php/news/maryland-governor-signs-stop-spam-calls-act-2023-law"
WA_SRC = "RCW 19.158.040(2) — https://app.leg.wa.gov/RCW/default.aspx?cite=19.158.040"
TX_SRC = "Tex. Bus. & Com. Code 301.051 — https://tcpaguide.org/states/texas/cold-calling"
AL_SRC = "Ala. Admin. Code r. 770-X-5-.17(1)(b); Ala. Code 1-3-8(a) — https://leadmanagerhelp.clickpointsoftware.com/en/articles/5753977-state-calling-hours"
DNC_SRC = "47 CFR 64.1200(c)(2); TSR 310.4(b)(1)(iii)(B) — https://telemarketing.donotcall.gov/faq/faqbusiness.aspx"
SAFE_HARBOR = "47 CFR 64.1200(c)(2)(i); 16 CFR 310.4(b)(3) — https://www.compliancepoint.com/articles/guidance-regarding-how-frequently-you-must-scrub-against-do-not-call-lists/"
REVOKE_SRC = "FCC 24-24, 47 CFR 64.1200(a)(10),(d)(3) — https://scoop.offervault.com/2024/03/18/fcc-announces-final-rule-reflecting-changes-to-tcpa-revocation-of-consent"
PEWC_SRC = "47 CFR 64.1200(a)(2),(f)(9) PEWC — https://docs.jornaya.com/v1/docs/tcpa-glossary ; COMPLIANCE.md §1.2, §5"
ZONES_SRC = "COMPLIANCE.md §3.2 (every candidate zone must pass); split NPAs per phonenumbers 9.0.43 and §3.1 overlays"
INBOUND_SRC = "TSR exempts consumer-initiated calls — https://www.orlandollp.com/consumer-law/federal-telemarketing-sales-rule-exempt-calls/ ; COMPLIANCE.md §1.7"
POLICY = "exchange policy (COMPLIANCE.md §6), not a statute"
RND_SRC = "47 CFR 64.1200(m) — https://docs.fcc.gov/public/attachments/DA-21-1649A1.txt ; COMPLIANCE.md §1.5"
EBR_SRC = "EBR: 3 months after an inquiry — https://telemarketing.donotcall.gov/faq/faqbusiness.aspx ; COMPLIANCE.md §1.3 (manual callbacks only)"


def utc(local: str, tz: str = "America/New_York") -> str:
    """'2026-04-15 20:59:59' in ``tz`` as RFC 3339 UTC."""
    dt = datetime.fromisoformat(local).replace(tzinfo=ZoneInfo(tz))
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def stamp(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def consent(phone: str, sellers: list[str] | None = None, created: str = "2026-04-13T15:00:00Z",
            expires: str | None = "2026-07-12T15:00:00Z", revoked: str | None = None, address: dict | None = None) -> dict:
    rec: dict[str, Any] = {
        "vendor": "trustedform", "cert_id": "https://cert.trustedform.com/0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c",
        "phone": phone, "sellers": sellers if sellers is not None else [BUYER], "created_at": created,
        "expires_at": expires, "revoked_at": revoked, "disclosure_text": DISCLOSURE, "ip": "203.0.113.7",
        "page_url": "https://quotes.example.com/auto",
    }
    if address is not None:
        rec["address"] = address
    return rec


def case(cid: str, at: str, callee: str | None, expect: tuple, why: str, *, direction: str = "outbound",
         caller: str = PUB_LINE, token: str | None = "auto", cons: dict | None = None, snapshot: str | None = "auto",
         national: dict | None = None, state_dnc: dict | None = None, internal: list | None = None,
         litigators: list | None = None, prior: list | None = None, rnd: dict | None = None, holidays: dict | None = None,
         buyer: str = BUYER, origin: str | None = None, dial_mode: str | None = None, vertical: str = "auto_insurance",
         campaign: str = "cmp_auto_1", extra_state: dict | None = None) -> dict:
    try:  # by default the snapshot is 5 days old and the consent was captured 2 days before the call
        when = datetime.fromisoformat(at.replace("Z", "+00:00"))
        if when.tzinfo is None:
            raise ValueError
    except ValueError:
        when = datetime(2026, 4, 15, 16, tzinfo=timezone.utc)
    if snapshot == "auto":
        snapshot = (when - timedelta(days=5)).date().isoformat()
    if token == "auto":
        token = f"tok_{cid}"
        if cons is None:
            cons = {token: consent(callee if direction == "outbound" else caller, created=stamp(when - timedelta(days=2)),
                                   expires=stamp(when + timedelta(days=90)))}
    call: dict[str, Any] = {"direction": direction, "at_utc": at, "publisher": "pub_7", "buyer": buyer, "campaign": campaign,
                            "vertical": vertical, "consent_token": token, "caller": caller, "callee": callee}
    if origin is not None:
        call["origin"] = origin
    if dial_mode is not None:
        call["dial_mode"] = dial_mode
    state: dict[str, Any] = {
        "national_dnc": None if snapshot is None else {"snapshot_date": snapshot, "numbers": national or {}},
        "state_dnc": state_dnc or {}, "internal_dnc": internal or [], "litigators": litigators or [],
        "consents": cons or {}, "prior_calls": prior or [], "rnd": rnd or {}, "state_holidays": holidays or {},
    }
    state.update(extra_state or {})
    exp: dict[str, Any] = {"allow": expect[0], "reason": expect[1]}
    if len(expect) > 2:
        exp["rule"] = expect[2]
    return {"id": cid, "call": call, "state": state, "expect": exp, "why": why}


def prior(consumer: str, at: str, direction: str = "outbound", buyer: str = BUYER, vertical: str = "auto_insurance") -> dict:
    return {"consumer": consumer, "direction": direction, "at_utc": at, "buyer": buyer, "vertical": vertical}


OK = (True, "ok")


def cases() -> list[dict]:
    W = "2026-04-15"  # a Wednesday
    c: list[dict] = []
    # ---------------------------------------------------------------- federal window edges
    c += [
        case("fed_0759_deny", utc(f"{W} 07:59:59"), NY, (False, "outside_calling_hours", "federal"), f"07:59:59 EDT is before 8 a.m. local. {TCPA_HOURS}"),
        case("fed_0800_allow", utc(f"{W} 08:00:00"), NY, OK, f"08:00:00 EDT opens the half-open window [08:00, 21:00). {TCPA_HOURS}"),
        case("fed_2059_allow", utc(f"{W} 20:59:59"), NY, OK, f"20:59:59 EDT is still inside [08:00, 21:00). {TCPA_HOURS}"),
        case("fed_2100_deny", utc(f"{W} 21:00:00"), NY, (False, "outside_calling_hours", "federal"), f"21:00:00 EDT: conservative reading of 'after 9 p.m.'. {TCPA_HOURS}"),
        case("fed_hawaii_0730_deny", utc(f"{W} 07:30", "Pacific/Honolulu"), HI, (False, "outside_calling_hours", "federal"), f"07:30 HST in Honolulu (noon in New York): the consumer's own zone counts. {TCPA_HOURS}"),
        case("fed_pr_1000_allow", utc(f"{W} 10:00", "America/Puerto_Rico"), PR, OK, f"Puerto Rico is domestic (§3.2), federal window only. {TCPA_HOURS}"),
    ]
    # ---------------------------------------------------------------- DST 2026
    c += [
        case("dst_spring_0800_edt_allow", "2026-03-08T12:00:00Z", NY, OK, f"2026-03-08 is the spring DST day: 12:00Z is 08:00 EDT (a fixed EST offset would say 07:00). {TCPA_HOURS}"),
        case("dst_spring_0759_edt_deny", "2026-03-08T11:59:59Z", NY, (False, "outside_calling_hours", "federal"), f"2026-03-08 11:59:59Z is 07:59:59 EDT. {TCPA_HOURS}"),
        case("dst_fall_0730_est_deny", "2026-11-01T12:30:00Z", NY, (False, "outside_calling_hours", "federal"), f"2026-11-01 is the fall DST day: 12:30Z is 07:30 EST (a stale EDT offset would say 08:30). {TCPA_HOURS}"),
        case("dst_fall_0800_est_allow", "2026-11-01T13:00:00Z", NY, OK, f"2026-11-01 13:00Z is 08:00 EST. {TCPA_HOURS}"),
        case("dst_fall_2100_est_deny", "2026-11-02T02:00:00Z", NY, (False, "outside_calling_hours", "federal"), f"2026-11-02 02:00Z is 21:00 EST on Nov 1. {TCPA_HOURS}"),
        case("dst_fall_2059_est_allow", "2026-11-02T01:59:00Z", NY, OK, f"20:59 EST on the fall DST day. {TCPA_HOURS}"),
    ]
    # ---------------------------------------------------------------- state rows (high, and TX)
    c += [
        case("fl_1959_allow", utc(f"{W} 19:59:59"), FL, OK, f"Florida closes at 8 p.m.; 19:59:59 EDT is inside. {FL_SRC}"),
        case("fl_2000_deny", utc(f"{W} 20:00:00"), FL, (False, "outside_calling_hours", "FL"), f"20:00 EDT in Miami: Florida's 8 p.m. limit, earlier than the federal 9 p.m. {FL_SRC}"),
        case("fl_sunday_1000_allow", utc("2026-04-19 10:00"), FL, OK, f"Florida allows 8-8 every day, Sunday included. {FL_SRC}"),
        case("ok_2030_deny", utc(f"{W} 20:30", "America/Chicago"), OK_, (False, "outside_calling_hours", "OK"), f"20:30 CDT in Oklahoma City: 8-8 window. {OK_SRC}"),
        case("ok_0800_allow", utc(f"{W} 08:00", "America/Chicago"), OK_, OK, f"08:00 CDT opens Oklahoma's window. {OK_SRC}"),
        case("md_2000_deny", utc(f"{W} 20:00"), MD, (False, "outside_calling_hours", "MD"), f"20:00 EDT in Baltimore: Maryland 8-8. {MD_SRC}"),
        case("md_1200_allow", utc(f"{W} 12:00"), MD, OK, f"Noon in Maryland. {MD_SRC}"),
        case("wa_2000_deny", utc(f"{W} 20:00", "America/Los_Angeles"), WA, (False, "outside_calling_hours", "WA"), f"20:00 PDT in Seattle: 'after 8:00 p.m. at the call recipient's local time'. {WA_SRC}"),
        case("wa_1959_allow", utc(f"{W} 19:59", "America/Los_Angeles"), WA, OK, f"19:59 PDT in Seattle. {WA_SRC}"),
        case("tx_0830_deny", utc(f"{W} 08:30", "America/Chicago"), TX, (False, "outside_calling_hours", "TX"), f"08:30 CDT in Dallas: Texas opens at 9 a.m. {TX_SRC}"),
        case("tx_sunday_1159_deny", utc("2026-04-19 11:59", "America/Chicago"), TX, (False, "outside_calling_hours", "TX"), f"Texas Sunday window is noon-9 p.m. {TX_SRC}"),
        case("tx_sunday_1200_allow", utc("2026-04-19 12:00", "America/Chicago"), TX, OK, f"Texas Sunday opens at noon. {TX_SRC}"),
        case("tx_el_paso_mountain_deny", utc(f"{W} 09:30", "America/Chicago"), TX_EP, (False, "outside_calling_hours", "TX"), f"09:30 CDT is 08:30 MDT in El Paso (915, Mountain time inside Texas). {TX_SRC}; {ZONES_SRC}"),
        case("al_sunday_deny", utc("2026-04-19 12:00", "America/Chicago"), AL, (False, "state_day_restriction", "AL"), f"No solicitation calls on Sunday in Alabama. {AL_SRC}"),
        case("al_saturday_1959_allow", "2026-04-19T00:59:00Z", AL, OK, f"Saturday 19:59 CDT in Alabama is already Sunday in UTC: the local date decides. {AL_SRC}; COMPLIANCE.md §3.2"),
        case("al_saturday_2000_deny", "2026-04-19T01:00:00Z", AL, (False, "outside_calling_hours", "AL"), f"Saturday 20:00 CDT: Alabama's 8 p.m. limit. {AL_SRC}"),
        case("al_holiday_deny", utc("2026-12-25 12:00", "America/Chicago"), AL, (False, "state_day_restriction", "AL"), f"Christmas is an Alabama legal holiday: no calls. {AL_SRC}", holidays={"AL": ["2026-12-25"]}),
        case("al_weekday_allow", utc(f"{W} 12:00", "America/Chicago"), AL, OK, f"A Wednesday noon in Alabama. {AL_SRC}", holidays={"AL": ["2026-12-25"]}),
        case("ms_sunday_deny", utc("2026-04-19 12:00", "America/Chicago"), MS, (False, "state_day_restriction", "MS"), "Mississippi bans Sunday solicitation. Miss. Code 77-3-723(1) — COMPLIANCE.md §2 (medium)"),
        case("ri_saturday_1700_deny", utc("2026-04-18 17:00"), RI, (False, "outside_calling_hours", "RI"), "Rhode Island Saturday 10-5. https://www.dropcowboy.com/state-compliance — COMPLIANCE.md §2 (low: verify)"),
        case("ky_0930_deny", utc(f"{W} 09:30"), KY, (False, "outside_calling_hours", "KY"), "Kentucky 10 a.m.-9 p.m. KRS 367.46955(3) — COMPLIANCE.md §2 (medium)"),
        case("ct_0830_deny", utc(f"{W} 08:30"), CT, (False, "outside_calling_hours", "CT"), "Connecticut 9 a.m.-8 p.m. Conn. Gen. Stat. 42-288a — COMPLIANCE.md §2 (medium)"),
        case("la_emergency_deny", utc(f"{W} 12:00", "America/Chicago"), LA, (False, "state_emergency", "LA"), "Declared emergency: all solicitation banned. La. R.S. 45:844.31 — https://lpsc.louisiana.gov/DNC_Emergency (operator flag)", extra_state={"emergency_states": ["LA"]}),
    ]
    # ---------------------------------------------------------------- split area codes and candidates
    c += [
        case("fl_850_split_2030_et_deny", utc(f"{W} 20:30"), FL_SPLIT, (False, "outside_calling_hours", "FL"), f"850 spans Central and Eastern: 20:30 EDT (19:30 CDT) is past Florida's 8 p.m. in the Eastern part. {ZONES_SRC}; {FL_SRC}"),
        case("fl_448_overlay_0830_et_deny", utc(f"{W} 08:30"), FL_OVERLAY, (False, "outside_calling_hours", "federal"), f"448 overlays 850: 08:30 EDT is 07:30 CDT in the Central part. {ZONES_SRC}"),
        case("in_812_0830_et_deny", utc(f"{W} 08:30"), IN_SPLIT, (False, "outside_calling_hours", "federal"), f"812 spans Eastern and Central: 08:30 EDT is 07:30 CDT in Evansville. {ZONES_SRC}"),
        case("in_812_0900_et_allow", utc(f"{W} 09:00"), IN_SPLIT, OK, f"09:00 EDT = 08:00 CDT: open in both zones. {ZONES_SRC}"),
        case("in_930_overlay_2030_et_deny", utc(f"{W} 20:30", "America/Chicago"), IN_OVERLAY, (False, "outside_calling_hours", "federal"), f"930 overlays 812: 20:30 CDT is 21:30 EDT. {ZONES_SRC}"),
        case("az_928_navajo_summer_deny", "2026-07-16T03:00:00Z", AZ_NAVAJO, (False, "outside_calling_hours", "federal"), f"928 in July: 20:00 MST in Phoenix but 21:00 MDT on the Navajo Nation (DST). {ZONES_SRC}"),
        case("ak_907_adak_deny", utc(f"{W} 08:30", "America/Anchorage"), AK, (False, "outside_calling_hours", "federal"), f"907 includes the Aleutians (America/Adak, one hour behind Anchorage): 08:30 AKDT is 07:30 HDT. {ZONES_SRC}"),
        case("consent_address_fl_2030_deny", utc(f"{W} 20:30"), NY,
             (False, "outside_calling_hours", "FL"), f"A 212 number whose consent address is in Florida: Florida joins the candidate states (§3.2 adds the address state). {FL_SRC}",
             cons={"tok_consent_address_fl_2030_deny": consent(NY, address={"state": "FL", "zip": "33101"})}),
        case("consent_address_tx_zip_0930_deny", utc(f"{W} 09:30"), NY,
             (False, "outside_calling_hours", "federal"), "A 212 number whose consent address ZIP is in Texas: Texas's zones join (09:30 EDT is 07:30 MDT in El Paso). COMPLIANCE.md §3.2",
             cons={"tok_consent_address_tx_zip_0930_deny": consent(NY, address={"zip": "79901"})}),
    ]
    # ---------------------------------------------------------------- frequency caps
    t = "2026-04-15T18:00:00Z"
    three = [prior(FL, "2026-04-15T17:00:00Z"), prior(FL, "2026-04-15T13:00:00Z"), prior(FL, "2026-04-14T22:00:00Z")]
    c += [
        case("fl_4th_call_24h_deny", t, FL, (False, "state_frequency_limit", "FL"), f"3 prior outbound auto_insurance calls in 24 h: a 4th exceeds Florida's limit. {FL_SRC}", prior=three),
        case("fl_3rd_call_allow", t, FL, OK, f"2 prior calls: the 3rd is allowed. {FL_SRC}", prior=three[:2]),
        case("fl_prior_exactly_24h_counts_deny", t, FL, (False, "state_frequency_limit", "FL"), f"A call exactly 24 h earlier is inside [t-24h, t) (boundary inclusive, §2). {FL_SRC}",
             prior=three[:2] + [prior(FL, "2026-04-14T18:00:00Z")]),
        case("fl_prior_24h_1s_ago_allow", t, FL, OK, f"A call 24 h and 1 s earlier has aged out of the rolling window. {FL_SRC}",
             prior=three[:2] + [prior(FL, "2026-04-14T17:59:59Z")]),
        case("fl_other_vertical_allow", t, FL, OK, f"The cap is per subject matter: 3 prior calls were about health insurance. {FL_SRC}",
             prior=[prior(FL, p["at_utc"], vertical="health_insurance") for p in three]),
        case("fl_other_buyers_count_deny", t, FL, (False, "state_frequency_limit", "FL"), f"Counted exchange-wide, whoever called: 'regardless of the phone number used'. {FL_SRC}",
             prior=[prior(FL, p["at_utc"], buyer=OTHER) for p in three]),
        case("fl_inbound_priors_not_counted_allow", t, FL, OK, f"Inbound calls are not counted (§1.7). {FL_SRC}",
             prior=[prior(FL, p["at_utc"], direction="inbound") for p in three]),
        case("ok_4th_call_deny", "2026-04-15T18:00:00Z", OK_, (False, "state_frequency_limit", "OK"), f"Oklahoma: 3 per 24 h, same subject. {OK_SRC}",
             prior=[prior(OK_, p["at_utc"]) for p in three]),
        case("md_4th_call_deny", "2026-04-15T18:00:00Z", MD, (False, "state_frequency_limit", "MD"), f"Maryland: 3 calls or texts per 24 h. {MD_SRC}",
             prior=[prior(MD, p["at_utc"]) for p in three]),
        case("ny_no_cap_allow", "2026-04-15T18:00:00Z", NY, OK, "New York has no frequency cap in the spec's table (only FL, OK, MD). COMPLIANCE.md §2",
             prior=[prior(NY, p["at_utc"]) for p in three]),
    ]
    # ---------------------------------------------------------------- DNC lists and snapshot age
    noon = utc(f"{W} 12:00")
    c += [
        case("ndnc_hit_no_consent_deny", noon, NY, (False, "national_dnc"), f"Registered, no consent. {DNC_SRC}", token=None, national={NY: {"added": "2026-03-06"}}),
        case("ndnc_added_yesterday_deny", noon, NY, (False, "national_dnc"), f"Registered yesterday: the 31 days limit the copy's age, not a grace period (§1.3). {DNC_SRC}",
             token=None, national={NY: {"added": "2026-04-14"}}, snapshot="2026-04-14"),
        case("ndnc_hit_pewc_names_buyer_allow", noon, NY, OK, f"A registry hit is excused by PEWC naming the buyer and the number (policy allow_dnc_with_pewc). {DNC_SRC}; {PEWC_SRC}", national={NY: {"added": "2026-03-06"}}),
        case("ndnc_hit_consent_other_seller_deny", noon, NY, (False, "national_dnc"), f"The consent names another seller: it does not excuse the registry hit (step 10 before 11). {DNC_SRC}",
             national={NY: {"added": "2026-03-06"}}, cons={"tok_ndnc_hit_consent_other_seller_deny": consent(NY, [OTHER])}),
        case("ndnc_manual_callback_ebr_allow", noon, NY, OK, f"A manual callback 30 days after the consumer called this buyer: inquiry EBR. {EBR_SRC}",
             token=None, national={NY: {"added": "2026-03-06"}}, origin="callback", dial_mode="manual",
             prior=[prior(NY, "2026-03-16T15:00:00Z", direction="inbound")]),
        case("ndnc_ebr_expired_91d_deny", noon, NY, (False, "national_dnc"), f"The inquiry was 91 days ago: the 90-day EBR has lapsed. {EBR_SRC}",
             token=None, national={NY: {"added": "2026-03-06"}}, origin="callback", dial_mode="manual",
             prior=[prior(NY, "2026-01-14T15:00:00Z", direction="inbound")]),
        case("ndnc_autodialed_callback_no_ebr_deny", noon, NY, (False, "national_dnc"), f"The EBR excuse is for manual callbacks only. {EBR_SRC}",
             token=None, national={NY: {"added": "2026-03-06"}}, origin="callback", dial_mode="autodialed",
             prior=[prior(NY, "2026-04-10T15:00:00Z", direction="inbound")]),
        case("ebr_other_buyer_inquiry_deny", noon, NY, (False, "consent_missing"), f"The inquiry went to another buyer: no EBR with this one, and no consent. {EBR_SRC}",
             token=None, origin="callback", dial_mode="manual", prior=[prior(NY, "2026-04-10T15:00:00Z", direction="inbound", buyer=OTHER)]),
        case("state_dnc_tx_deny", utc(f"{W} 12:00", "America/Chicago"), TX, (False, "state_dnc", "TX"), "On the Texas state DNC list, no consent. Tex. Bus. & Com. Code 304.051 — https://texas.public.law/statutes/tex._bus._and_com._code_section_304.051",
             token=None, state_dnc={"TX": {"snapshot_date": "2026-04-01", "numbers": [TX]}}),
        case("snapshot_31_days_allow", "2026-05-11T16:00:00Z", NY, OK, f"The snapshot is exactly 31 days old: still allowed. {SAFE_HARBOR}",
             snapshot="2026-04-10", cons={"tok_snapshot_31_days_allow": consent(NY, expires="2026-12-31T00:00:00Z")}),
        case("snapshot_32_days_stale_deny", "2026-05-12T16:00:00Z", NY, (False, "dnc_snapshot_stale"), f"The snapshot is 32 days old. {SAFE_HARBOR}",
             snapshot="2026-04-10", cons={"tok_snapshot_32_days_stale_deny": consent(NY, expires="2026-12-31T00:00:00Z")}),
        case("no_snapshot_deny", noon, NY, (False, "dnc_snapshot_stale"), f"No national snapshot loaded: fail closed. {SAFE_HARBOR}; COMPLIANCE.md §0", snapshot=None),
        case("stale_beats_ndnc_deny", "2026-05-20T16:00:00Z", NY, (False, "dnc_snapshot_stale"), "Step 9 (snapshot age) comes before step 10 (registry hit). COMPLIANCE.md §6",
             token=None, national={NY: {"added": "2026-03-06"}}, snapshot="2026-04-10"),
    ]
    # ---------------------------------------------------------------- internal DNC, litigators, RND
    c += [
        case("internal_dnc_exchange_deny", noon, NY, (False, "internal_dnc"), f"Exchange-wide opt-out beats consent (§1.7). {REVOKE_SRC}",
             internal=[{"number": NY, "scope": "exchange", "added_at": "2026-04-14T10:00:00Z", "source": "sms_stop"}]),
        case("internal_dnc_own_buyer_deny", noon, NY, (False, "internal_dnc"), "This buyer's own company-specific DNC list. 47 CFR 64.1200(d)(3)",
             internal=[{"number": NY, "scope": f"buyer:{BUYER}", "added_at": "2026-04-14T10:00:00Z", "source": "agent"}]),
        case("internal_dnc_other_buyer_allow", noon, NY, OK, "Another buyer's company-specific list does not bind this buyer. 47 CFR 64.1200(d)(3)",
             internal=[{"number": NY, "scope": f"buyer:{OTHER}", "added_at": "2026-04-14T10:00:00Z", "source": "agent"}]),
        case("internal_dnc_at_exact_instant_deny", noon, NY, (False, "internal_dnc"), "An opt-out applies from added_at <= at (the same instant included). COMPLIANCE.md §6 step 6",
             internal=[{"number": NY, "scope": "exchange", "added_at": noon, "source": "ivr"}]),
        case("internal_dnc_added_after_call_allow", noon, NY, OK, "An opt-out recorded after the call does not apply to it. COMPLIANCE.md §6 step 6",
             internal=[{"number": NY, "scope": "exchange", "added_at": utc(f"{W} 12:00:01"), "source": "ivr"}]),
        case("internal_dnc_before_hours_deny", utc(f"{W} 22:00"), NY, (False, "internal_dnc"), "Permanent reasons (steps 1-12) come before temporal ones (13-15). COMPLIANCE.md §6",
             internal=[{"number": NY, "scope": "exchange", "added_at": "2026-04-01T10:00:00Z", "source": "email"}]),
        case("litigator_deny", noon, NY, (False, "litigator_list"), "Known TCPA litigator: blocked by policy. COMPLIANCE.md §4.1, §6 step 8", litigators=[NY]),
        case("rnd_disconnected_after_consent_deny", noon, NY, (False, "reassigned_number"), f"Disconnected after the consent was given: the number may belong to someone else. {RND_SRC}",
             rnd={NY: {"disconnected_at": "2026-04-14"}}),
        case("rnd_disconnected_before_consent_allow", noon, NY, OK, f"Disconnected before the consent date: the consent was given by the new subscriber. {RND_SRC}",
             rnd={NY: {"disconnected_at": "2025-12-01"}}),
    ]
    # ---------------------------------------------------------------- consent variants
    c += [
        case("consent_missing_deny", noon, NY, (False, "consent_missing"), f"Outbound without a consent token. {PEWC_SRC}", token=None),
        case("consent_unknown_token_deny", noon, NY, (False, "consent_not_found"), f"The token names no known record. {PEWC_SRC}", token="tok_nobody_knows", cons={}),
        case("consent_phone_mismatch_deny", noon, NY, (False, "consent_phone_mismatch"), f"The consent was given for another number. {PEWC_SRC}",
             cons={"tok_consent_phone_mismatch_deny": consent(FL)}),
        case("consent_seller_mismatch_deny", noon, NY, (False, "consent_seller_mismatch"), f"The buyer is not among the named sellers; the one-to-one rule was vacated but the buyer must still be named. {PEWC_SRC}",
             cons={"tok_consent_seller_mismatch_deny": consent(NY, [OTHER])}),
        case("consent_multi_seller_allow", noon, NY, OK, "One consent may name several sellers since IMC v. FCC (11th Cir. 2025-01-24) — https://mintz.com/insights-center/viewpoints/2776/2025-01-31-telephone-and-texting-compliance-news-litigation-update",
             cons={"tok_consent_multi_seller_allow": consent(NY, [OTHER, BUYER])}),
        case("consent_expired_exact_instant_deny", noon, NY, (False, "consent_expired"), f"expires_at <= at_utc counts as expired (§5). {PEWC_SRC}",
             cons={"tok_consent_expired_exact_instant_deny": consent(NY, expires=noon)}),
        case("consent_expires_1s_later_allow", noon, NY, OK, f"One second before expiry. {PEWC_SRC}",
             cons={"tok_consent_expires_1s_later_allow": consent(NY, expires=utc(f"{W} 12:00:01"))}),
        case("consent_revoked_exact_instant_deny", noon, NY, (False, "consent_revoked"), f"revoked_at <= at: applied at once, 10 business days is a ceiling. {REVOKE_SRC}",
             cons={"tok_consent_revoked_exact_instant_deny": consent(NY, revoked=noon)}),
        case("consent_revoked_1s_later_allow", noon, NY, OK, f"A revocation one second after the call does not apply to it. {REVOKE_SRC}",
             cons={"tok_consent_revoked_1s_later_allow": consent(NY, revoked=utc(f"{W} 12:00:01"))}),
        case("consent_revoked_before_hours_deny", utc(f"{W} 22:00"), NY, (False, "consent_revoked"), "Revocation (step 7) is checked before the calling window (step 14). COMPLIANCE.md §6",
             cons={"tok_consent_revoked_before_hours_deny": consent(NY, revoked="2026-04-15T01:00:00Z")}),
        case("consent_captured_after_call_deny", noon, NY, (False, "consent_not_found"), f"Consent captured after the call did not exist when it was placed ({POLICY}).",
             cons={"tok_consent_captured_after_call_deny": consent(NY, created="2026-04-15T17:00:00Z")}),
        case("consent_missing_before_hours_deny", utc(f"{W} 23:00"), NY, (False, "consent_missing"), "Consent (step 11) is checked before the calling window (step 14). COMPLIANCE.md §6", token=None),
        case("campaign_abandon_breaker_deny", noon, NY, (False, "campaign_abandon_rate"), "Campaign at 3% abandonment over 30 days: autodialed outbound stops. https://legalclarity.org/what-is-the-maximum-abandonment-rate-allowed-by-tcpa",
             extra_state={"abandoned_campaigns": ["cmp_auto_1"]}),
    ]
    # ---------------------------------------------------------------- numbers and request shape
    c += [
        case("invalid_number_text_deny", noon, "not-a-number", (False, "invalid_number"), f"Unparseable callee must deny, not raise. {POLICY}"),
        case("invalid_number_short_deny", noon, "+1212736500", (False, "invalid_number"), f"Nine national digits: not a valid number. {POLICY}"),
        case("invalid_number_empty_deny", noon, "", (False, "invalid_number"), f"Empty callee. {POLICY}", token=None),
        case("non_us_canada_deny", noon, CANADA, (False, "non_us_number"), "+1 416 is Toronto: a +1 prefix does not mean US. COMPLIANCE.md §3.2"),
        case("non_us_uk_deny", noon, UK, (False, "non_us_number"), "A UK mobile: outbound only to US, PR, GU, VI, AS, MP. COMPLIANCE.md §3.2"),
        case("toll_free_deny", noon, TOLL_FREE, (False, "non_geographic_number"), "Toll-free numbers cannot be placed as consumer legs. COMPLIANCE.md §3.2"),
        case("premium_900_deny", noon, PREMIUM, (False, "non_geographic_number"), "Premium 900 is not a subscriber number. COMPLIANCE.md §3.2"),
        case("naive_timestamp_deny", "2026-04-15T12:00:00", NY, (False, "invalid_request"), f"at_utc without Z or an offset. {POLICY}"),
        case("date_only_timestamp_deny", "2026-04-15", NY, (False, "invalid_request"), f"at_utc must be a full RFC 3339 time. {POLICY}"),
        case("offset_timestamp_allow", "2026-04-15T08:00:00-04:00", NY, OK, f"An RFC 3339 offset is as good as Z: 08:00-04:00 is 08:00 EDT. {TCPA_HOURS}"),
        case("unknown_direction_deny", noon, NY, (False, "invalid_request"), f"direction must be inbound or outbound. {POLICY}", direction="sideways"),
    ]
    # ---------------------------------------------------------------- inbound
    c += [
        case("inbound_fl_3am_allow", "2026-04-15T07:00:00Z", "+18885550123", (True, "inbound_consumer_initiated"), f"03:00 EDT inbound from a Florida consumer. {INBOUND_SRC}", direction="inbound", caller=FL, token=None),
        case("inbound_on_ndnc_allow", noon, "+18885550123", (True, "inbound_consumer_initiated"), f"The registry bars calls to the consumer, not calls from them. {INBOUND_SRC}",
             direction="inbound", caller=NY, token=None, national={NY: {"added": "2026-03-06"}}),
        case("inbound_internal_dnc_allow", noon, "+18885550123", (True, "inbound_consumer_initiated"), f"No bar on accepting a call from an opted-out consumer (§1.7, §8 item 7). {INBOUND_SRC}",
             direction="inbound", caller=NY, token=None, internal=[{"number": NY, "scope": "exchange", "added_at": "2026-04-01T10:00:00Z", "source": "ivr"}]),
        case("inbound_canada_caller_allow", noon, "+18885550123", (True, "inbound_consumer_initiated"), f"Inbound is allowed once the caller number parses (step 3 before step 4). {INBOUND_SRC}",
             direction="inbound", caller=CANADA, token=None),
        case("inbound_withheld_caller_deny", noon, "+18885550123", (False, "invalid_number"), "Withheld caller ID: no number-based check can run. COMPLIANCE.md §1.7",
             direction="inbound", caller="anonymous", token=None),
        case("inbound_stale_snapshot_allow", "2026-06-30T16:00:00Z", "+18885550123", (True, "inbound_consumer_initiated"), f"DNC snapshot age only matters for outbound. {INBOUND_SRC}",
             direction="inbound", caller=NY, token=None),
    ]
    return c


def main() -> None:
    rows = cases()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} cases to {OUT}")


if __name__ == "__main__":
    main()

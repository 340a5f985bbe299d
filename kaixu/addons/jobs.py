"""A door's background jobs (Kaixu Gateway 13's `gateway-job-submit`, `-status`, `-result`), answered for the
authenticated caller once its body is read, and the job runner (kaixu/jobs/runner.py) running for as long as
the proxy runs. The shapes of the answers are the door's (`FrontDoor.jobs`, kaixu/formats/doors.py); a job is
its key's: another key gets the 404 of a job that does not exist."""

from __future__ import annotations

import json

from mitmproxy import http

from kaixu import mitm
from kaixu.call import ATTRIBUTE_HEADERS, Call, get_call
from kaixu.credentials import internal_credential
from kaixu.exceptions import KaixuError
from kaixu.formats import FormatError
from kaixu.formats.doors import JobDoor, front_door
from kaixu.gateway import Gateway
from kaixu.jobs.runner import JobRunner
from kaixu.permission import model_refusal
from kaixu.request_facts import decode_chat
from kaixu.respond import error_response, json_response


class Jobs:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.runner = JobRunner(
            store=lambda: gateway.stores.jobs if gateway.stores is not None else None,
            settings=lambda: gateway.require_policy().jobs,
            target=self.base_url,
            credential=lambda name, expires: internal_credential(gateway.internal_secret, name, expires),
        )
        gateway.jobs = self.runner

    async def base_url(self) -> str | None:
        """Where a job's request goes: a listener of this process only (`Gateway.private_url`: the credential it
        carries is known to this process alone; the policy's listeners may be forward proxies or shared by
        workers). None once kaixu no longer accepts requests (a graceful stop): no job is claimed then."""
        accepting = mitm.listen_address() is not None or any(s.is_serving() for s in self.gateway.own_listeners)
        private = self.gateway.private_url
        return await private() if accepting and private is not None else None

    def running(self) -> None:
        self.runner.start()

    async def done(self) -> None:
        await self.runner.stop()

    async def request(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        if call is None or flow.response is not None:
            return
        door = front_door(call.front).jobs
        if door is None:
            return
        try:
            if call.operation == "job_submit" or self._background(call, door):
                flow.response = await self.submit(flow, call, door)
            elif call.operation in ("job_status", "job_result", "job_cancel") or (
                call.operation == "stored_response" and flow.request.method == "GET"
            ):
                flow.response = await self.answer(flow, call, door)
        except KaixuError as exc:
            flow.response = error_response(call, exc.status, str(exc), exc.type, exc.code)

    @staticmethod
    def _background(call: Call, door: JobDoor) -> bool:
        """A chat whose body asks to be a job (the Responses API's `background: true`)."""
        field = door.background_field
        return call.operation == "chat" and field is not None and call.body is not None and call.body.get(field) is True

    async def answer(self, flow: http.HTTPFlow, call: Call, door: JobDoor) -> http.Response | None:
        """A poll, a result, a kick or a cancel, in the door's shape; None: not a job (a stored response)."""
        operation = call.operation
        call.operation = "local"  # not requests to a model: not in the ledger
        job_id = call.resource or flow.request.query.get("id", "")
        owner = call.caller.owner()
        if operation == "job_cancel":
            job = await self.runner.cancel(job_id, owner)
        elif flow.request.query.get("kick") in ("1", "true"):
            job = await self.runner.kick(job_id, owner)
        else:
            job = await self.runner.find(job_id, owner)
        if job is None:
            if operation == "stored_response":
                call.operation = operation  # a stored response, maybe (the next step looks)
                return None
            return error_response(call, 404, f"no such job: {job_id!r}", "not_found_error", "job_not_found")
        asked = "status" if operation == "job_status" else "result"
        result = job.result_body if job.status == "succeeded" else None
        status, body = door.state(job.public(), result, asked)
        return json_response(call, status, body)

    async def submit(self, flow: http.HTTPFlow, call: Call, door: JobDoor) -> http.Response:
        caller = call.caller
        if caller.byok:
            message = "a background job needs a kaixu key (it cannot keep your provider key)"
            return error_response(call, 403, message, "permission_error", "jobs_need_a_kaixu_key")
        try:
            decode_chat(call)  # a body the door would refuse is the client's 400 now, not a failed job later
        except FormatError as exc:
            return error_response(call, 400, str(exc), "invalid_request_error", "invalid_field")
        model = call.model or ""
        denied = model_refusal(call, model)
        if denied is not None:
            return error_response(call, 403, denied.message, "permission_error", denied.code)
        route = call.policy.resolve_model(model)
        if route is None:
            status, kind, code = front_door(call.front).unknown_model
            return error_response(call, status, f"model {model!r} is not served by this gateway", kind, code)
        targets = [t for t in route.targets if call.provider_hint in (None, call.policy.providers[t.provider].kind)]
        provider = (targets or route.targets)[0].provider
        headers = {h: flow.request.headers[h] for h, _ in ATTRIBUTE_HEADERS if h in flow.request.headers}
        body = flow.request.content or b"{}"
        field = door.background_field
        if field is not None and call.body is not None and call.body.get(field) is True:
            if call.stream or call.body.get("previous_response_id") is not None:
                what = "stream" if call.stream else "previous_response_id"
                message = f"{field}: not supported with {what} yet (a background response runs alone, as JSON)"
                return error_response(call, 400, message, "invalid_request_error", "unsupported_parameter")
            # run as an ordinary request of the door; its answer is kept with the job, not as a stored response
            run = {k: v for k, v in call.body.items() if k != field}
            body = json.dumps({**run, "store": False}, separators=(",", ":")).encode()
            call.turn = None
        job = await self.runner.submit(
            owner=caller.owner(),
            front=call.front,
            path=door.run_path,
            body=body,
            headers=headers,
            provider=provider,
            job_id=door.new_id() if door.new_id is not None else None,
        )
        status, answer = door.accepted(job.id, model)
        return json_response(call, status, answer)

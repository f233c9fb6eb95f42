"""Uppy's S3 routes over dropgate's own service: Companion mode (`@uppy/aws-s3`'s `companionEndpoint`, or
`endpoint` in 5.x) and Uppy 6's signRequest mode (`POST /s3/sign`).

The protocols' shapes (request parsing, answers) are shared/uploads/companion.py and
shared/uploads/browser_s3.py; these are the routes.
"""

from presign_context import browser_s3, caller, service, settings

from shared.platform.auth import Principal
from shared.platform.http import Route, json_response, read_json
from shared.uploads import companion
from shared.uploads.browser_s3 import SignRequest
from shared.uploads.model import as_upload_id
from shared.uploads.parts import uppy_part_size
from shared.uploads.requests import CompletedPart


def sign_s3_request(request):
    """signRequest mode: one S3 request the plugin wants to send storage, signed for the caller's upload."""
    principal, actor = caller(request, counted_by_route=True)
    signed = browser_s3().sign(principal, SignRequest.from_json(read_json(request)), actor)
    return json_response(200, signed)


def companion_params(request):
    """A file the plugin sends in one POST: registered, then a POST policy for exactly it."""
    principal, actor = caller(request, get_changes_state=True)
    file = companion.file_from_params(request.args)
    upload = service().create(principal, file.new, actor, multipart=False, client_ref=file.ref)
    policy = browser_s3().post_policy(upload)
    return json_response(200, {"method": "POST", "url": policy.url, "fields": policy.fields,
                               "expires": settings.limits.url_expiry_seconds})


def companion_create(request):
    principal, actor = caller(request)
    file = companion.file_from_companion(read_json(request))
    upload = service().create(principal, file.new, actor, part_size_rule=uppy_part_size, client_ref=file.ref)
    return json_response(200, companion.created(upload))


def _companion_upload_id(principal: Principal, request, handle: str, *, counted_by_route: bool = False) -> str:
    upload_id = as_upload_id(handle)  # what these routes hand out; else a storage UploadId (older pages)
    if upload_id is not None:
        return upload_id  # the route's sign_parts counts the request, and answers 404 for another's upload
    return service().find_by_storage_id(principal, handle, request.args.get("key"), count_refusal=counted_by_route)


def companion_list_parts(request, upload_id):
    principal, _ = caller(request)
    _, parts = service().describe(principal, _companion_upload_id(principal, request, upload_id))
    return json_response(200, [{"PartNumber": p.number, "Size": p.size, "ETag": p.etag} for p in parts])


def companion_batch_sign(request, upload_id):
    principal, _ = caller(request, counted_by_route=True)
    upload_id = _companion_upload_id(principal, request, upload_id, counted_by_route=True)
    signed = service().sign_parts(principal, upload_id, companion.part_numbers_from_query(
        request.args.get("partNumbers")), count_request=True)
    return json_response(200, {"presignedUrls": {str(part["number"]): part["url"] for part in signed}})


def companion_sign_part(request, upload_id, part_number):
    principal, _ = caller(request, counted_by_route=True)
    upload_id = _companion_upload_id(principal, request, upload_id, counted_by_route=True)
    [signed] = service().sign_parts(principal, upload_id, [companion.single_part(part_number)], count_request=True)
    return json_response(200, {"url": signed["url"], "expires": settings.limits.url_expiry_seconds})


def companion_complete(request, upload_id):
    principal, actor = caller(request)
    upload_id = _companion_upload_id(principal, request, upload_id)
    parts = CompletedPart.list_from_json(read_json(request), number_key="PartNumber", etag_key="ETag")
    upload = service().complete(principal, upload_id, parts, actor)
    return json_response(200, companion.completed(upload, settings.storage.public_endpoint_url or ""))


def companion_abort(request, upload_id):
    principal, actor = caller(request)
    service().abort(principal, _companion_upload_id(principal, request, upload_id), actor)
    return json_response(200, {})


ROUTES = [
    Route("POST", "/s3/sign", sign_s3_request),
    Route("GET", "/s3/params", companion_params),
    Route("POST", "/s3/multipart", companion_create),
    Route("GET", "/s3/multipart/{upload_id}/batch", companion_batch_sign),
    Route("GET", "/s3/multipart/{upload_id}", companion_list_parts),
    Route("DELETE", "/s3/multipart/{upload_id}", companion_abort),
    Route("POST", "/s3/multipart/{upload_id}/complete", companion_complete),
    Route("GET", "/s3/multipart/{upload_id}/{part_number}", companion_sign_part),
]

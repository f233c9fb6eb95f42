"""Uppy Companion's S3 multipart routes (`@uppy/aws-s3` in Companion mode), over dropgate's own service.

The protocol's shapes (request parsing, answers) are shared/uploads/companion.py; these are the routes.
"""

from presign_context import caller, service, settings

from shared.platform.auth import Principal
from shared.platform.http import Route, json_response, read_json
from shared.uploads import companion
from shared.uploads.requests import CompletedPart


def companion_create(request):
    principal, actor = caller(request)
    new = companion.new_upload_from_companion(read_json(request))
    upload = service().create(principal, new, actor, part_size_rule=companion.uppy_default_part_size)
    return json_response(200, companion.created(upload))


def _companion_upload_id(principal: Principal, request, storage_upload_id: str, *,
                         counted_by_route: bool = False) -> str:
    return service().find_by_storage_id(principal, storage_upload_id, request.args.get("key"),
                                        count_refusal=counted_by_route)


def companion_list_parts(request, storage_upload_id):
    principal, _ = caller(request)
    _, parts = service().describe(principal, _companion_upload_id(principal, request, storage_upload_id))
    return json_response(200, [{"PartNumber": p.number, "Size": p.size, "ETag": p.etag} for p in parts])


def companion_batch_sign(request, storage_upload_id):
    principal, _ = caller(request, counted_by_route=True)
    upload_id = _companion_upload_id(principal, request, storage_upload_id, counted_by_route=True)
    signed = service().sign_parts(principal, upload_id, companion.part_numbers_from_query(
        request.args.get("partNumbers")), count_request=True)
    return json_response(200, {"presignedUrls": {str(part["number"]): part["url"] for part in signed}})


def companion_sign_part(request, storage_upload_id, part_number):
    principal, _ = caller(request, counted_by_route=True)
    upload_id = _companion_upload_id(principal, request, storage_upload_id, counted_by_route=True)
    [signed] = service().sign_parts(principal, upload_id, [companion.single_part(part_number)], count_request=True)
    return json_response(200, {"url": signed["url"], "expires": settings.limits.url_expiry_seconds})


def companion_complete(request, storage_upload_id):
    principal, actor = caller(request)
    upload_id = _companion_upload_id(principal, request, storage_upload_id)
    parts = CompletedPart.list_from_json(read_json(request), number_key="PartNumber", etag_key="ETag")
    upload = service().complete(principal, upload_id, parts, actor)
    return json_response(200, companion.completed(upload, settings.storage.public_endpoint_url or ""))


def companion_abort(request, storage_upload_id):
    principal, actor = caller(request)
    service().abort(principal, _companion_upload_id(principal, request, storage_upload_id), actor)
    return json_response(200, {})


ROUTES = [
    Route("POST", "/s3/multipart", companion_create),
    Route("GET", "/s3/multipart/{storage_upload_id}/batch", companion_batch_sign),
    Route("GET", "/s3/multipart/{storage_upload_id}", companion_list_parts),
    Route("DELETE", "/s3/multipart/{storage_upload_id}", companion_abort),
    Route("POST", "/s3/multipart/{storage_upload_id}/complete", companion_complete),
    Route("GET", "/s3/multipart/{storage_upload_id}/{part_number}", companion_sign_part),
]

package org.fhirbulk;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;

/**
 * An export failed, or a call was refused. Unchecked; subclasses mirror the C status codes:
 *
 * <table>
 *   <caption>Exception classes by code</caption>
 *   <tr><th>code</th><th>class</th></tr>
 *   <tr><td>4</td><td>{@link CancelledException} (cancelled, closed or interrupted)</td></tr>
 *   <tr><td>103</td><td>{@link ConfigException}</td></tr>
 *   <tr><td>200, 201</td><td>{@link NetworkException}, {@link NetworkTimeoutException}</td></tr>
 *   <tr><td>202</td><td>{@link ProtocolException}</td></tr>
 *   <tr><td>203, 301</td><td>{@link AuthException}, {@link UnauthorizedException}</td></tr>
 *   <tr><td>300</td><td>{@link BadRequestException}</td></tr>
 *   <tr><td>302</td><td>{@link ForbiddenException}</td></tr>
 *   <tr><td>303</td><td>{@link NotFoundException}</td></tr>
 *   <tr><td>306</td><td>{@link UnprocessableException}</td></tr>
 *   <tr><td>307</td><td>{@link ThrottledException}</td></tr>
 *   <tr><td>308</td><td>{@link ServerException}</td></tr>
 *   <tr><td>others (100 invalid argument, 101 invalid handle, 102 busy, 104 internal, 304, 305,
 *       309)</td><td>{@code FhirBulkException}</td></tr>
 * </table>
 *
 * <p>Every exception carries the code and its stable {@link #name()}, the HTTP status and the
 * URL (without its query) of the failed request when there was one, and the server's
 * OperationOutcome {@link #issues()}. Messages never contain secrets or record content.
 */
public class FhirBulkException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    private final int code;
    private final String name;
    private final int httpStatus;
    private final String url;
    private final List<Issue> issues;

    public FhirBulkException(int code, String name, int httpStatus, String url, String message,
            List<Issue> issues) {
        super(message);
        this.code = code;
        this.name = name;
        this.httpStatus = httpStatus;
        this.url = url;
        this.issues = issues == null ? List.of() : List.copyOf(issues);
    }

    /** The status code ({@code FHIRBULK_ERR_*} of fhirbulk.h, or 4 for cancelled). */
    public int code() {
        return code;
    }

    /** The stable short name of {@link #code()}: {@code "not_found"}, {@code "config"}, ... */
    public String name() {
        return name;
    }

    /** The HTTP status of the failed response, or 0 when the failure was not an HTTP answer. */
    public int httpStatus() {
        return httpStatus;
    }

    /** The URL of the failed request without query and credentials, or {@code null}. */
    public String url() {
        return url;
    }

    /** The OperationOutcome issues the server sent (possibly empty). */
    public List<Issue> issues() {
        return issues;
    }

    // ---- construction from the library's last error ----------------------------------------

    /**
     * Builds the exception for {@code status} from the library's last error on handle {@code h}
     * (0: this thread's), read with its structured calls ({@code export_error_code},
     * {@code _http_status}, {@code _url}, {@code _issue}): no JSON is parsed. When the last
     * error has another code, only the status is trusted.
     */
    static FhirBulkException fromLastError(int status, long h) {
        String name = LibFhirBulk.statusName(status);
        if (LibFhirBulk.export_error_code(h) != status) {
            return create(status, name, 0, null, "fhirbulk: " + name + " (status " + status + ")", List.of());
        }
        String message = LibFhirBulk.text(LibFhirBulk::export_last_error, h); // names the URL
        int http = LibFhirBulk.export_error_http_status(h);
        String url = LibFhirBulk.text(LibFhirBulk::export_error_url, h);
        int n = (int) Math.min(LibFhirBulk.export_error_issue_count(h), 1000);
        List<Issue> issues = new ArrayList<>(n);
        for (int i = 0; i < n; i++) {
            long index = i;
            LibFhirBulk.TextFn severity = (hh, b, l) -> LibFhirBulk.export_error_issue(hh, index, LibFhirBulk.ISSUE_SEVERITY, b, l);
            LibFhirBulk.TextFn code = (hh, b, l) -> LibFhirBulk.export_error_issue(hh, index, LibFhirBulk.ISSUE_CODE, b, l);
            LibFhirBulk.TextFn diag = (hh, b, l) -> LibFhirBulk.export_error_issue(hh, index, LibFhirBulk.ISSUE_DIAGNOSTICS, b, l);
            String d = LibFhirBulk.text(diag, h);
            issues.add(new Issue(LibFhirBulk.text(severity, h), LibFhirBulk.text(code, h), d.isEmpty() ? null : d));
        }
        return create(status, name, http, url.isEmpty() ? null : url, message.isEmpty() ? name : message,
                Collections.unmodifiableList(issues));
    }

    // ---- construction from the library's JSON detail ----------------------------------------

    /**
     * Builds the exception for {@code status} from {@code export_last_error_json} output
     * ({@code {"code":303,"name":"not_found","http_status":404,"url":...,"message":...,
     * "issues":[...]}}). When the detail describes another code, only the code is trusted.
     */
    static FhirBulkException fromDetail(int status, String detailJson) {
        Map<String, Object> d = Json.parseObject(detailJson);
        Object c = d.get("code");
        boolean matches = c instanceof Long l && l == status;
        String name = LibFhirBulk.statusName(status);
        int http = 0;
        String url = null;
        String message;
        List<Issue> issues = List.of();
        if (matches) {
            http = d.get("http_status") instanceof Long h ? h.intValue() : 0;
            url = d.get("url") instanceof String u ? u : null;
            message = d.get("message") instanceof String m ? m : name;
            if (url != null) {
                message = message + " (" + url + ")";
            }
            issues = issues(d.get("issues"));
        } else {
            message = "fhirbulk: " + name + " (status " + status + ")";
        }
        return create(status, name, http, url, message, issues);
    }

    private static List<Issue> issues(Object v) {
        if (!(v instanceof List<?> list)) {
            return List.of();
        }
        List<Issue> out = new ArrayList<>(list.size());
        for (Object o : list) {
            if (o instanceof Map<?, ?> m) {
                out.add(new Issue(str(m.get("severity")), str(m.get("code")), str(m.get("diagnostics"))));
            }
        }
        return Collections.unmodifiableList(out);
    }

    private static String str(Object o) {
        return o instanceof String s ? s : null;
    }

    static FhirBulkException create(int code, String name, int http, String url, String message,
            List<Issue> issues) {
        return switch (code) {
            case LibFhirBulk.CANCELLED -> new CancelledException(message);
            case LibFhirBulk.ERR_CONFIG -> new ConfigException(code, name, http, url, message, issues);
            case LibFhirBulk.ERR_NETWORK -> new NetworkException(code, name, http, url, message, issues);
            case LibFhirBulk.ERR_TIMEOUT -> new NetworkTimeoutException(code, name, http, url, message, issues);
            case LibFhirBulk.ERR_PROTOCOL -> new ProtocolException(code, name, http, url, message, issues);
            case LibFhirBulk.ERR_AUTH -> new AuthException(code, name, http, url, message, issues);
            case LibFhirBulk.ERR_UNAUTHORIZED -> new UnauthorizedException(code, name, http, url, message, issues);
            case LibFhirBulk.ERR_BAD_REQUEST -> new BadRequestException(code, name, http, url, message, issues);
            case LibFhirBulk.ERR_FORBIDDEN -> new ForbiddenException(code, name, http, url, message, issues);
            case LibFhirBulk.ERR_NOT_FOUND -> new NotFoundException(code, name, http, url, message, issues);
            case LibFhirBulk.ERR_UNPROCESSABLE -> new UnprocessableException(code, name, http, url, message, issues);
            case LibFhirBulk.ERR_THROTTLED -> new ThrottledException(code, name, http, url, message, issues);
            case LibFhirBulk.ERR_SERVER -> new ServerException(code, name, http, url, message, issues);
            default -> new FhirBulkException(code, name, http, url, message, issues);
        };
    }
}

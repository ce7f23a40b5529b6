/*
 * fhirbulk.hpp: a header-only C++17 wrapper over the C API in fhirbulk.h. Not generated.
 *
 *   fhirbulk::Export exp(R"({"base_url": "https://ehr.example.org/r4", "level": "group",
 *                             "group_id": "g1", "types": ["Patient", "Observation"]})");
 *   for (fhirbulk::Record r : exp)          // throws fhirbulk::Error when the export fails
 *       store(r.resource_type, r.json);     // string_views into the library's buffer
 *
 * - Export owns one handle (RAII, move-only). Its destructor calls export_free, which cancels an
 *   unfinished export (the server job is DELETEd) and joins the library's threads: breaking
 *   out of the loop early is a clean cancel.
 * - Records are views, no copies: valid until the next record is pulled (the next loop
 *   iteration). Copy what you keep (std::string(r.json)). Under the hood records come in
 *   batches of one file's chunk per native call (export_next_batch).
 * - Clinical documents (config "attachments": "save"): a document an attachment links comes as a
 *   record of Kind::attachment before the record that links it (in that file's order; records
 *   of other files may come between: match by file_index and line); r.json describes it
 *   ({"resource":"DocumentReference/1","position":0,"url":...,"hash":...,"file":...}) and
 *   r.content holds its bytes (a view, like r.json). One that cannot be fetched gives a
 *   Kind::error record (an OperationOutcome) in its place.
 * - Failures throw fhirbulk::Error (a std::runtime_error) with the status code, the HTTP status,
 *   the URL and the full JSON detail (the server's OperationOutcome issues included).
 * - Events (README, "Events"): next_event() gives what the export is doing (kick-off, polls,
 *   files started and completed, retries, the end), pulled when the caller wants.
 * - Config builds a config key by key (fhirbulk_config_set) for callers who would rather not
 *   write JSON.
 * - Threads: poll(), cancel(), manifest(), files(), next_event() may be called from any thread; pulling
 *   records and checkpoint() from one thread at a time. cancel() from another thread makes the
 *   consumer's pull throw an Error with code() == FHIRBULK_CANCELLED.
 */
#ifndef FHIRBULK_HPP
#define FHIRBULK_HPP

#include "fhirbulk.h"

#include <cstddef>
#include <cstdint>
#include <iterator>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>
#if __cplusplus >= 202002L && __has_include(<span>)
#include <span>
#endif

namespace fhirbulk {

using Status = FhirbulkStatus;      // FHIRBULK_OK, FHIRBULK_RECORD, ..., FHIRBULK_ERR_*
using Progress = FhirbulkProgress;  // state (FHIRBULK_STATE_*), files, bytes, server_progress, wait_*,
                                    // attachments_fetched, attachment_errors, ...

/// The library's version ("0.1.0"); FHIRBULK_VERSION is the header's.
inline const char *version() noexcept { return fhirbulk_version(); }

/// The process-wide cap on files downloading at once over all exports (0: the default, 32).
/// The exports of a process share the engine's threads; each still downloads at most its
/// `concurrency` files at once. Any thread, any time.
inline void set_max_downloads(unsigned n) noexcept { (void)fhirbulk_set_max_downloads(n); }
/// A short stable name for a status: "record", "not_found", ...
inline const char *status_name(Status s) noexcept { return fhirbulk_status_name(s); }

/// `s` as a JSON string literal, for building configs: "\"" + escaped s + "\"".
inline std::string json_quote(std::string_view s) {
    static const char hex[] = "0123456789abcdef";
    std::string out = "\"";
    for (char c : s) {
        auto u = static_cast<unsigned char>(c);
        if (c == '"' || c == '\\') {
            out += '\\';
            out += c;
        } else if (u < 0x20) {
            out += "\\u00";
            out += hex[u >> 4];
            out += hex[u & 15];
        } else {
            out += c;
        }
    }
    return out + '"';
}

namespace detail {
// Text from a function with snprintf semantics (full length returned; NULL/0 asks for it).
// Loops because the text may grow between the two calls (a manifest, say).
template <class F> std::string read_text(F f) {
    std::string s;
    std::size_t n = f(nullptr, 0);
    for (;;) {
        s.resize(n + 1);
        std::size_t m = f(s.data(), s.size());
        if (m <= n) {
            s.resize(m);
            return s;
        }
        n = m;
    }
}

// The raw value of a top-level key in a compact JSON object (as the library writes it), or "".
inline std::string_view json_field(std::string_view j, std::string_view key) {
    int depth = 0;
    for (std::size_t i = 0; i < j.size(); ++i) {
        char c = j[i];
        if (c == '{' || c == '[') ++depth;
        if (c == '}' || c == ']') --depth;
        if (c != '"') continue;
        std::size_t start = ++i;
        while (i < j.size() && j[i] != '"') i += j[i] == '\\' ? 2u : 1u;
        if (i + 1 >= j.size() || depth != 1 || j[i + 1] != ':' || j.substr(start, i - start) != key)
            continue;
        std::size_t v = i + 2, e = v;
        if (e < j.size() && j[e] == '"') {
            for (++e; e < j.size() && j[e] != '"';) e += j[e] == '\\' ? 2u : 1u;
            return j.substr(v, e + 1 - v);
        }
        while (e < j.size() && j[e] != ',' && j[e] != '}') ++e;
        return j.substr(v, e - v);
    }
    return {};
}

// A JSON string literal's text (simple escapes; the library's URLs are ASCII).
inline std::string json_unquote(std::string_view v) {
    std::string out;
    if (v.size() < 2 || v.front() != '"') return out;
    for (std::size_t i = 1; i + 1 < v.size(); ++i) {
        char c = v[i];
        if (c == '\\' && i + 2 < v.size()) {
            c = v[++i];
            c = c == 'n' ? '\n' : c == 't' ? '\t' : c == 'r' ? '\r' : c;
        }
        out += c;
    }
    return out;
}
}  // namespace detail

/// One issue of the server's OperationOutcome.
struct Issue {
    std::string severity;     // "fatal", "error", "warning", "information"
    std::string code;         // "not-found", "too-costly", ...
    std::string diagnostics;  // "" when absent
    std::string details;      // details.text, "" when absent
};

/// A failed call: what() is the library's message (it names the URL when there was a request).
class Error : public std::runtime_error {
public:
    Error(Status code, const std::string &message, std::string json, std::uint32_t http_status = 0,
          std::string url = "", std::vector<Issue> issues = {})
        : std::runtime_error(message), code_(code), http_status_(http_status),
          url_(std::move(url)), json_(std::move(json)), issues_(std::move(issues)) {}

    /// The error after `s` from a call on `h` (nullptr: the last error of this thread), read
    /// with the library's structured error calls (export_error_*).
    static Error last(Status s, const FhirbulkExport *h) {
        if (s == FHIRBULK_CANCELLED) return Error(s, "the export was cancelled", "");
        auto msg = detail::read_text(
            [h](char *b, std::size_t n) { return export_last_error(h, b, n); });
        auto json = detail::read_text(
            [h](char *b, std::size_t n) { return export_last_error_json(h, b, n); });
        auto url = detail::read_text(
            [h](char *b, std::size_t n) { return export_error_url(h, b, n); });
        std::vector<Issue> issues(export_error_issue_count(h));
        for (std::size_t i = 0; i < issues.size(); ++i) {
            auto field = [h, i](std::uint32_t f) {
                return detail::read_text(
                    [h, i, f](char *b, std::size_t n) { return export_error_issue(h, i, f, b, n); });
            };
            issues[i] = Issue{field(FHIRBULK_ISSUE_SEVERITY), field(FHIRBULK_ISSUE_CODE),
                              field(FHIRBULK_ISSUE_DIAGNOSTICS), field(FHIRBULK_ISSUE_DETAILS)};
        }
        if (msg.empty()) msg = std::string("fhirbulk: ") + fhirbulk_status_name(s);
        return Error(s, msg, std::move(json), export_error_http_status(h), std::move(url),
                     std::move(issues));
    }

    /// FHIRBULK_ERR_* (or FHIRBULK_CANCELLED).
    Status code() const noexcept { return code_; }
    /// "not_found", "network", ... (fhirbulk_status_name).
    const char *name() const noexcept { return fhirbulk_status_name(code_); }
    /// The HTTP status of the failed response, 0 when no response caused it.
    std::uint32_t http_status() const noexcept { return http_status_; }
    /// The request URL without its query, "" when no request caused it.
    const std::string &url() const noexcept { return url_; }
    /// The server's OperationOutcome issues (empty when it sent none).
    const std::vector<Issue> &issues() const noexcept { return issues_; }
    /// export_last_error_json: {"code":303,"name":"not_found","http_status":404,"url":"...",
    /// "message":"...","issues":[{"severity":"error","code":"not-found","diagnostics":"..."}]}
    /// ("" for errors with no detail, such as a cancel).
    const std::string &json() const noexcept { return json_; }

private:
    Status code_;
    std::uint32_t http_status_ = 0;
    std::string url_;
    std::string json_;
    std::vector<Issue> issues_;
};

/// A config built key by key (README, "Config keys"), no JSON to write:
///   fhirbulk::Config c;
///   c.set("base_url", url).set("level", "group").set("group_id", "g1")
///    .add("types", "Patient").set("concurrency", 4);
///   fhirbulk::Export exp(c);
/// A key the engine does not know or a value of the wrong type throws Error
/// (FHIRBULK_ERR_CONFIG naming the key) at the set. Move-only; one thread at a time.
class Config {
public:
    Config() {
        Status s = fhirbulk_config_new(&c_);
        if (s != FHIRBULK_OK) throw Error::last(s, nullptr);
    }
    Config(const Config &) = delete;
    Config &operator=(const Config &) = delete;
    Config(Config &&o) noexcept : c_(std::exchange(o.c_, nullptr)) {}
    Config &operator=(Config &&o) noexcept {
        if (this != &o) {
            fhirbulk_config_free(c_);
            c_ = std::exchange(o.c_, nullptr);
        }
        return *this;
    }
    ~Config() { fhirbulk_config_free(c_); }

    /// Set `key` from text, read as the key's type ("4", "true", "Patient,Observation", a JSON
    /// list or object); nested keys with dots ("auth.type", "headers.X-Tenant").
    Config &set(const std::string &key, const std::string &value) {
        Status s = fhirbulk_config_set(c_, key.c_str(), value.c_str());
        if (s != FHIRBULK_OK) throw Error::last(s, nullptr);
        return *this;
    }
    Config &set(const std::string &key, const char *value) { return set(key, std::string(value)); }
    Config &set(const std::string &key, bool value) { return set(key, value ? "true" : "false"); }
    template <class T, class = std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool>>>
    Config &set(const std::string &key, T value) {
        return set(key, std::to_string(value));
    }
    /// Append `value` as it is to the list at `key` ("types", "type_filters", ...).
    Config &add(const std::string &key, const std::string &value) {
        Status s = fhirbulk_config_add(c_, key.c_str(), value.c_str());
        if (s != FHIRBULK_OK) throw Error::last(s, nullptr);
        return *this;
    }
    /// The C config (still owned by this object).
    const FhirbulkConfig *handle() const noexcept { return c_; }

private:
    FhirbulkConfig *c_ = nullptr;
};

/// One event of an export (README, "Events").
struct Event {
    std::uint64_t seq = 0;
    std::string type;  // "kickoff", "status", "file_completed", ..., "completed"
    std::string json;  // the whole event: {"seq":..,"time":"..","type":"..",...fields}
};

/// What a record is: which manifest list its file came from, or a document fhirbulk fetched.
enum class Kind : std::uint32_t {
    output = FHIRBULK_KIND_OUTPUT,
    error = FHIRBULK_KIND_ERROR,      // an OperationOutcome from an `error` file (or fhirbulk's)
    deleted = FHIRBULK_KIND_DELETED,  // a Bundle of deletions
    attachment = FHIRBULK_KIND_ATTACHMENT,  // a document (config "attachments": "save")
};

/// One record: views into the library's buffer, valid until the next record is pulled.
struct Record {
    std::string_view json;           // one NDJSON line (a JSON object), without the newline
    std::string_view resource_type;  // the manifest's type (or the line's own resourceType)
    Kind kind = Kind::output;
    std::uint32_t file_index = 0;    // index into files()
    std::uint64_t line = 0;          // 1-based line number in that file
    /// Kind::attachment: the document's bytes (binary, NOT NUL-terminated; json describes it,
    /// resource_type/file_index/line are those of the record that links it, which comes later).
    /// Empty for every other kind. A view like json: valid until the next record is pulled.
    std::string_view content;

    /// The document's bytes as unsigned bytes (nullptr for kinds other than attachment).
    const std::uint8_t *content_data() const noexcept {
        return reinterpret_cast<const std::uint8_t *>(content.data());
    }
    /// The document's length in bytes (0 for kinds other than attachment).
    std::size_t content_size() const noexcept { return content.size(); }
#if __cplusplus >= 202002L && __has_include(<span>)
    /// C++20: the document's bytes as a span.
    std::span<const std::uint8_t> content_span() const noexcept {
        return {content_data(), content.size()};
    }
#endif
};

/// One export: started by the constructor, freed (and cancelled if unfinished) by the destructor.
class Export {
public:
    /// Start the export described by `config_json` (README, "Config keys"); throws Error
    /// (FHIRBULK_ERR_CONFIG naming the key, ...). `batch_size`: records per native call.
    explicit Export(const std::string &config_json, std::size_t batch_size = 4096)
        : batch_size_(batch_size ? batch_size : 1) {
        if (fhirbulk_abi_version() != FHIRBULK_ABI_VERSION)
            throw Error(FHIRBULK_ERR_INTERNAL,
                        "libfhirbulk ABI " + std::to_string(fhirbulk_abi_version()) +
                            " differs from fhirbulk.h's " + std::to_string(FHIRBULK_ABI_VERSION),
                        "");
        Status s = export_start(config_json.c_str(), &h_);
        if (s != FHIRBULK_OK) throw Error::last(s, nullptr);
    }
    /// Start the export a Config describes (the Config may start more).
    explicit Export(const Config &config, std::size_t batch_size = 4096)
        : batch_size_(batch_size ? batch_size : 1) {
        Status s = export_start_config(config.handle(), &h_);
        if (s != FHIRBULK_OK) throw Error::last(s, nullptr);
    }
    Export(const Export &) = delete;
    Export &operator=(const Export &) = delete;
    Export(Export &&o) noexcept
        : h_(std::exchange(o.h_, nullptr)), batch_size_(o.batch_size_),
          batch_(std::exchange(o.batch_, {})), pos_(std::exchange(o.pos_, 0)),
          events_done_(o.events_done_) {}
    Export &operator=(Export &&o) noexcept {
        if (this != &o) {
            export_free(h_);
            h_ = std::exchange(o.h_, nullptr);
            batch_size_ = o.batch_size_;
            batch_ = std::exchange(o.batch_, {});
            pos_ = std::exchange(o.pos_, 0);
            events_done_ = o.events_done_;
        }
        return *this;
    }
    /// Frees the handle: an unfinished export is cancelled (its server job DELETEd) first.
    ~Export() { export_free(h_); }

    /// Pull the next record into `out`. `timeout_ms`: -1 waits as long as it takes, 0 only
    /// tries. Returns FHIRBULK_RECORD, FHIRBULK_END or FHIRBULK_TIMEOUT; throws Error otherwise
    /// (an export error, or FHIRBULK_CANCELLED). `out` is valid until the next pull.
    Status next(Record &out, std::int32_t timeout_ms = -1) {
        if (pos_ >= batch_.count) {
            FhirbulkBatch b{};
            Status s = export_next_batch(h_, batch_size_, timeout_ms, &b);
            if (s == FHIRBULK_END || s == FHIRBULK_TIMEOUT) {
                batch_ = {};
                pos_ = 0;
                return s;
            }
            if (s != FHIRBULK_RECORD) throw Error::last(s, h_);
            batch_ = b;
            pos_ = 0;
        }
        const FhirbulkRecord &r = batch_.records[pos_++];
        out.json = std::string_view(reinterpret_cast<const char *>(r.data), r.len);
        out.resource_type = std::string_view(r.resource_type, r.resource_type_len);
        out.kind = static_cast<Kind>(r.kind);
        out.file_index = r.file_index;
        out.line = r.line;
        out.content = r.content ? std::string_view(reinterpret_cast<const char *>(r.content), r.content_len)
                                : std::string_view();
        return FHIRBULK_RECORD;
    }

    /// Input iterator over the records (each pull waits as long as it takes).
    class iterator {
    public:
        using iterator_category = std::input_iterator_tag;
        using value_type = Record;
        using difference_type = std::ptrdiff_t;
        using pointer = const Record *;
        using reference = const Record &;
        iterator() = default;
        explicit iterator(Export *e) : e_(e) { ++*this; }
        reference operator*() const { return rec_; }
        pointer operator->() const { return &rec_; }
        iterator &operator++() {
            if (e_ && e_->next(rec_, -1) != FHIRBULK_RECORD) e_ = nullptr;
            return *this;
        }
        void operator++(int) { ++*this; }
        friend bool operator==(const iterator &a, const iterator &b) { return a.e_ == b.e_; }
        friend bool operator!=(const iterator &a, const iterator &b) { return a.e_ != b.e_; }

    private:
        Export *e_ = nullptr;
        Record rec_;
    };
    /// Starts pulling: begin() already waits for the first record (and may throw).
    iterator begin() { return iterator(this); }
    iterator end() { return iterator(); }

    /// A progress snapshot (state, server X-Progress text, files, bytes, records, documents
    /// fetched and attachment errors). Never blocks.
    Progress poll() const {
        Progress p{};
        Status s = export_poll(h_, &p);
        if (s != FHIRBULK_OK) throw Error::last(s, h_);
        return p;
    }
    /// Cancel: stop downloads, DELETE the server job, wake a blocked pull. Any thread.
    void cancel() const {
        Status s = export_cancel(h_);
        if (s != FHIRBULK_OK) throw Error::last(s, h_);
    }
    /// The manifest JSON ("" before there is one); its transactionTime is the next `since`.
    std::string manifest() const {
        return detail::read_text(
            [this](char *b, std::size_t n) { return export_manifest(h_, b, n); });
    }
    /// The files known so far, in file_index order: [{"index":0,"kind":"output",...}, ...].
    std::string files() const {
        return detail::read_text(
            [this](char *b, std::size_t n) { return export_files_json(h_, b, n); });
    }
    /// The warnings so far as a JSON array of strings ("[]" when none): a manifest listing a
    /// file twice, a `count` that is not a number, a Retry-After clamped, ...
    std::string warnings() const {
        return detail::read_text(
            [this](char *b, std::size_t n) { return export_warnings_json(h_, b, n); });
    }
    /// A checkpoint of exactly the records pulled so far (the current one included), to pass
    /// later as the config's "resume". "" before the kick-off answered. Consuming thread only.
    std::string checkpoint() const {
        std::size_t unread = batch_.count - pos_;
        return detail::read_text([this, unread](char *b, std::size_t n) {
            return export_checkpoint_unread(h_, unread, b, n);
        });
    }
    /// The next event, waiting up to `timeout_ms` (0: only looks; -1: until there is one);
    /// std::nullopt when none came in time or after the last one (then events_done() is
    /// true). Any thread; each event goes to one caller.
    std::optional<Event> next_event(std::int32_t timeout_ms = 0) {
        std::string buf(4096, '\0');
        for (;;) {
            std::size_t n = 0;
            Status s = export_next_event(h_, timeout_ms, buf.data(), buf.size(), &n);
            if (s == FHIRBULK_RECORD) {
                buf.resize(n);
                Event e;
                for (char c : detail::json_field(buf, "seq"))
                    if (c >= '0' && c <= '9') e.seq = e.seq * 10 + std::uint64_t(c - '0');
                e.type = detail::json_unquote(detail::json_field(buf, "type"));
                e.json = std::move(buf);
                return e;
            }
            if (s == FHIRBULK_ERR_INVALID_ARGUMENT && n >= buf.size()) {
                buf.assign(n + 1, '\0');  // the event stays queued: again with room for it
                continue;
            }
            if (s == FHIRBULK_END) events_done_ = true;
            if (s == FHIRBULK_END || s == FHIRBULK_TIMEOUT) return std::nullopt;
            throw Error::last(s, nullptr);
        }
    }
    /// The export's last event (completed, failed or cancelled) was taken.
    bool events_done() const noexcept { return events_done_; }
    /// Events dropped because nobody read them in time (config event_queue_size).
    std::uint64_t events_dropped() const noexcept { return export_events_dropped(h_); }

    /// The C handle (still owned by this object), for calls the wrapper does not cover.
    FhirbulkExport *handle() const noexcept { return h_; }

private:
    FhirbulkExport *h_ = nullptr;
    std::size_t batch_size_;
    FhirbulkBatch batch_{};
    std::size_t pos_ = 0;
    bool events_done_ = false;
};

}  // namespace fhirbulk

#endif  // FHIRBULK_HPP

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
 * - Failures throw fhirbulk::Error (a std::runtime_error) with the status code, the HTTP status,
 *   the URL and the full JSON detail (the server's OperationOutcome issues included).
 * - Threads: poll(), cancel(), manifest(), files() may be called from any thread; pulling
 *   records and checkpoint() from one thread at a time. cancel() from another thread makes the
 *   consumer's pull throw an Error with code() == FHIRBULK_CANCELLED.
 */
#ifndef FHIRBULK_HPP
#define FHIRBULK_HPP

#include "fhirbulk.h"

#include <cstddef>
#include <cstdint>
#include <iterator>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

namespace fhirbulk {

using Status = FhirbulkStatus;      // FHIRBULK_OK, FHIRBULK_RECORD, ..., FHIRBULK_ERR_*
using Progress = FhirbulkProgress;  // state (FHIRBULK_STATE_*), files, bytes, server_progress, wait_*, ...

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

/// A failed call: what() is the library's message (it names the URL when there was a request).
class Error : public std::runtime_error {
public:
    Error(Status code, const std::string &message, std::string json)
        : std::runtime_error(message), code_(code), json_(std::move(json)) {
        std::string_view http = detail::json_field(json_, "http_status");
        for (char c : http)
            http_status_ = c >= '0' && c <= '9' ? http_status_ * 10 + unsigned(c - '0') : 0;
        url_ = detail::json_unquote(detail::json_field(json_, "url"));
    }

    /// The error after `s` from a call on `h` (nullptr: the last error of this thread).
    static Error last(Status s, const FhirbulkExport *h) {
        if (s == FHIRBULK_CANCELLED) return Error(s, "the export was cancelled", "");
        auto msg = detail::read_text(
            [h](char *b, std::size_t n) { return export_last_error(h, b, n); });
        auto json = detail::read_text(
            [h](char *b, std::size_t n) { return export_last_error_json(h, b, n); });
        if (msg.empty()) msg = std::string("fhirbulk: ") + fhirbulk_status_name(s);
        return Error(s, msg, std::move(json));
    }

    /// FHIRBULK_ERR_* (or FHIRBULK_CANCELLED).
    Status code() const noexcept { return code_; }
    /// "not_found", "network", ... (fhirbulk_status_name).
    const char *name() const noexcept { return fhirbulk_status_name(code_); }
    /// The HTTP status of the failed response, 0 when no response caused it.
    std::uint32_t http_status() const noexcept { return http_status_; }
    /// The request URL without its query, "" when no request caused it.
    const std::string &url() const noexcept { return url_; }
    /// export_last_error_json: {"code":303,"name":"not_found","http_status":404,"url":"...",
    /// "message":"...","issues":[{"severity":"error","code":"not-found","diagnostics":"..."}]}
    /// ("" for errors with no detail, such as a cancel).
    const std::string &json() const noexcept { return json_; }

private:
    Status code_;
    std::uint32_t http_status_ = 0;
    std::string url_;
    std::string json_;
};

/// Which manifest list a record's file came from.
enum class Kind : std::uint32_t {
    output = FHIRBULK_KIND_OUTPUT,
    error = FHIRBULK_KIND_ERROR,      // an OperationOutcome from an `error` file
    deleted = FHIRBULK_KIND_DELETED,  // a Bundle of deletions
};

/// One record: views into the library's buffer, valid until the next record is pulled.
struct Record {
    std::string_view json;           // one NDJSON line (a JSON object), without the newline
    std::string_view resource_type;  // the manifest's type (or the line's own resourceType)
    Kind kind = Kind::output;
    std::uint32_t file_index = 0;    // index into files()
    std::uint64_t line = 0;          // 1-based line number in that file
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
    Export(const Export &) = delete;
    Export &operator=(const Export &) = delete;
    Export(Export &&o) noexcept
        : h_(std::exchange(o.h_, nullptr)), batch_size_(o.batch_size_),
          batch_(std::exchange(o.batch_, {})), pos_(std::exchange(o.pos_, 0)) {}
    Export &operator=(Export &&o) noexcept {
        if (this != &o) {
            export_free(h_);
            h_ = std::exchange(o.h_, nullptr);
            batch_size_ = o.batch_size_;
            batch_ = std::exchange(o.batch_, {});
            pos_ = std::exchange(o.pos_, 0);
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

    /// A progress snapshot (state, server X-Progress text, files, bytes, records). Never blocks.
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
    /// The C handle (still owned by this object), for calls the wrapper does not cover.
    FhirbulkExport *handle() const noexcept { return h_; }

private:
    FhirbulkExport *h_ = nullptr;
    std::size_t batch_size_;
    FhirbulkBatch batch_{};
    std::size_t pos_ = 0;
};

}  // namespace fhirbulk

#endif  // FHIRBULK_HPP

// Tests of include/fhirbulk.hpp against a sandbox server (run by tests/packaging/run.sh, built
// with -fsanitize=address,undefined against the installed library).
//
//   test_wrapper ROOT TOTAL [DOCS DOC_ERRORS]
//     ROOT        the sandbox, http://127.0.0.1:PORT (started with --records-per-file 7)
//     TOTAL       records Group g1 has of Patient + Observation (from /_sandbox/truth)
//     DOCS        attachments of Group g1's DocumentReference + DiagnosticReport that fetch fine
//                 (/_sandbox/truth?attachments=1, outcome "ok")
//     DOC_ERRORS  those that fail with attachment_max_bytes 1000000 (missing, forbidden,
//                 server_error, hash_mismatch, large); without DOCS the attachment test is skipped
#include <fhirbulk.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

static int failures = 0;
static void check(bool ok, const char *what, int line) {
    if (!ok) {
        std::fprintf(stderr, "test_wrapper.cpp:%d: CHECK failed: %s\n", line, what);
        failures++;
    }
}
#define CHECK(cond) check(static_cast<bool>(cond), #cond, __LINE__)
// `expr` must throw a fhirbulk::Error with code() == `status`.
#define CHECK_THROWS(expr, status)                                \
    do {                                                          \
        try {                                                     \
            (void)(expr);                                         \
            check(false, "exception from " #expr, __LINE__);      \
        } catch (const fhirbulk::Error &e) {                      \
            CHECK(e.code() == (status));                          \
        }                                                         \
    } while (0)

static_assert(!std::is_copy_constructible_v<fhirbulk::Export>);
static_assert(!std::is_copy_assignable_v<fhirbulk::Export>);
static_assert(std::is_nothrow_move_constructible_v<fhirbulk::Export>);
static_assert(std::is_nothrow_move_assignable_v<fhirbulk::Export>);
static_assert(std::is_base_of_v<std::runtime_error, fhirbulk::Error>);

static std::string ROOT;
static long TOTAL = 0;
static long DOCS = -1;
static long DOC_ERRORS = -1;

static std::string config(const std::string &base, const std::string &group,
                          const std::string &extra = "") {
    return "{\"base_url\": " + fhirbulk::json_quote(base) +
           ", \"level\": \"group\", \"group_id\": " + fhirbulk::json_quote(group) +
           ", \"types\": [\"Patient\", \"Observation\"], \"poll_min_ms\": 50" + extra + "}";
}
static std::string g1(const std::string &extra = "") { return config(ROOT + "/fhir", "g1", extra); }

static bool contains(const std::string &s, const std::string &part) {
    return s.find(part) != std::string::npos;
}

// The raw value of a top-level key of a compact JSON object (a number as its digits).
static std::string detail_field(std::string_view json, std::string_view key) {
    return std::string(fhirbulk::detail::json_field(json, key));
}

// Pulls every remaining record, checking each one; returns how many.
static long drain(fhirbulk::Export &e, std::set<std::string> *seen = nullptr) {
    long n = 0;
    for (fhirbulk::Record r : e) {
        n++;
        std::string json(r.json);
        CHECK(json.size() > 2 && json.front() == '{' && json.back() == '}');
        CHECK(contains(json, "\"resourceType\":\"" + std::string(r.resource_type) + "\""));
        CHECK(r.kind == fhirbulk::Kind::output);
        CHECK(r.line >= 1 && r.line <= 7);
        if (seen) CHECK(seen->insert(json).second);  // never twice
    }
    return n;
}

static void test_basics() {
    CHECK(std::string(fhirbulk::version()) == FHIRBULK_VERSION);
    CHECK(std::string(fhirbulk::status_name(FHIRBULK_ERR_NOT_FOUND)) == "not_found");
    CHECK(fhirbulk::json_quote("a\"b\\c\n") == "\"a\\\"b\\\\c\\u000a\"");
}

static void test_config_errors() {
    try {
        fhirbulk::Export e("{\"base_url\": \"http://127.0.0.1:1/fhir\", \"no_such_key\": 1}");
        CHECK(!"an unknown key must throw");
    } catch (const fhirbulk::Error &e) {
        CHECK(e.code() == FHIRBULK_ERR_CONFIG);
        CHECK(std::string(e.name()) == "config");
        CHECK(contains(e.what(), "no_such_key"));
        CHECK(e.http_status() == 0 && e.url().empty());
        CHECK(contains(e.json(), "\"code\":103"));
    }
    CHECK_THROWS(fhirbulk::Export("not json"), FHIRBULK_ERR_CONFIG);
}

static void test_not_found() {
    fhirbulk::Export e(config(ROOT + "/fhir", "nope"));
    try {
        for (fhirbulk::Record r : e) (void)r;
        CHECK(!"a missing group must throw");
    } catch (const fhirbulk::Error &err) {
        std::printf("    404 error: %s\n    json: %s\n", err.what(), err.json().c_str());
        CHECK(err.code() == FHIRBULK_ERR_NOT_FOUND);
        CHECK(std::string(err.name()) == "not_found");
        CHECK(err.http_status() == 404);
        CHECK(err.url() == ROOT + "/fhir/Group/nope/$export");
        CHECK(contains(err.what(), "404"));
        CHECK(contains(err.json(), "\"code\":303") && contains(err.json(), "\"http_status\":404"));
        CHECK(contains(err.json(), "\"issues\":[{"));
        // The issues without parsing JSON.
        CHECK(!err.issues().empty());
        CHECK(err.issues().at(0).severity == "error" && err.issues().at(0).code == "not-found");
        CHECK(contains(err.issues().at(0).diagnostics, "nope"));
    }
    CHECK(e.poll().state == FHIRBULK_STATE_FAILED);
    CHECK(e.poll().http_status == 404);
}

static void test_full_export() {
    fhirbulk::Export e(g1(), 3);  // 3 records per native call: many batches
    std::set<std::string> seen;
    CHECK(drain(e, &seen) == TOTAL);
    fhirbulk::Progress p = e.poll();
    CHECK(p.state == FHIRBULK_STATE_DONE);
    CHECK(p.records_delivered == static_cast<std::uint64_t>(TOTAL));
    CHECK(contains(e.manifest(), "\"transactionTime\""));
    CHECK(e.files().front() == '[' && contains(e.files(), "\"type\":\"Observation\""));
    CHECK(e.begin() == e.end());  // pulling after the end: still the end
    fhirbulk::Record r;
    CHECK(e.next(r, 0) == FHIRBULK_END);
}

static void test_move() {
    fhirbulk::Export a(g1());
    fhirbulk::Record r;
    CHECK(a.next(r) == FHIRBULK_RECORD);
    CHECK(a.next(r) == FHIRBULK_RECORD);
    fhirbulk::Export b(std::move(a));  // mid-batch: b goes on from the third record
    CHECK(a.handle() == nullptr && b.handle() != nullptr);
    CHECK_THROWS(a.poll(), FHIRBULK_ERR_INVALID_HANDLE);
    CHECK_THROWS(a.cancel(), FHIRBULK_ERR_INVALID_HANDLE);
    CHECK_THROWS(a.begin(), FHIRBULK_ERR_INVALID_HANDLE);
    CHECK(a.manifest().empty() && a.checkpoint().empty());
    CHECK(2 + drain(b) == TOTAL);

    fhirbulk::Export c(g1());
    CHECK(c.next(r) == FHIRBULK_RECORD);
    fhirbulk::Export d(g1());
    c = std::move(d);  // frees (and cancels) c's first export
    CHECK(d.handle() == nullptr);
    CHECK(drain(c) == TOTAL);
    a = std::move(c);
    CHECK(a.poll().state == FHIRBULK_STATE_DONE);
}

// Breaking out of the loop early: the destructor cancels (the script counts the DELETE).
static void test_early_break() {
    auto t0 = std::chrono::steady_clock::now();
    {
        fhirbulk::Export e(config(ROOT + "/x/slow=300/fhir", "g1"));
        int n = 0;
        for (fhirbulk::Record r : e) {
            CHECK(!r.json.empty());
            if (++n == 3) break;
        }
        CHECK(n == 3);
        CHECK(e.poll().state == FHIRBULK_STATE_DOWNLOADING);
    }
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    CHECK(secs < 10);
}

static void test_cancel_from_another_thread() {
    fhirbulk::Export e(config(ROOT + "/x/polls=100/fhir", "g1"));
    fhirbulk::Record r;
    CHECK(e.next(r, 0) == FHIRBULK_TIMEOUT);
    std::thread t([&e] {
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        e.cancel();
    });
    try {
        for (fhirbulk::Record rec : e) (void)rec;
        CHECK(!"a cancelled export must throw");
    } catch (const fhirbulk::Error &err) {
        CHECK(err.code() == FHIRBULK_CANCELLED);
        CHECK(contains(err.what(), "cancelled"));
    }
    t.join();
    CHECK(e.poll().state == FHIRBULK_STATE_CANCELLED);
}

// A checkpoint part-way through a batch, then a resumed export: every record exactly once.
static void test_checkpoint_resume() {
    std::set<std::string> seen;
    std::string cp;
    {
        fhirbulk::Export e(g1(", \"delete_on_cancel\": false"));
        fhirbulk::Record r;
        for (int i = 0; i < 10; i++) {
            CHECK(e.next(r) == FHIRBULK_RECORD);
            CHECK(seen.insert(std::string(r.json)).second);
        }
        cp = e.checkpoint();
        CHECK(contains(cp, "{"));
    }
    fhirbulk::Export resumed(g1(", \"resume\": " + cp));
    CHECK(10 + drain(resumed, &seen) == TOTAL);
    CHECK(static_cast<long>(seen.size()) == TOTAL);
}

static void test_events() {
    fhirbulk::Export e(g1(", \"event_queue_size\": 100000"));
    CHECK(drain(e) == TOTAL);
    std::vector<fhirbulk::Event> events;
    while (auto ev = e.next_event(0)) events.push_back(*ev);
    CHECK(e.events_done());
    CHECK(!e.next_event(1000) && e.events_done());
    CHECK(e.events_dropped() == 0);
    CHECK(!events.empty() && events.front().type == "kickoff" && events.front().seq == 1);
    CHECK(!events.empty() && events.back().type == "completed");
    CHECK(!events.empty() && events.back().seq == events.size());
    std::size_t completed = 0;
    for (auto &ev : events) {
        CHECK(ev.json.front() == '{' && contains(ev.json, "\"type\":\"" + ev.type + "\""));
        if (ev.type == "file_completed") completed++;
    }
    std::string files = e.files();
    std::size_t nfiles = 0;
    for (std::size_t p = 0; (p = files.find("\"index\":", p)) != std::string::npos; ++p) nfiles++;
    CHECK(completed == nfiles && nfiles > 0);
}

static void test_config_object() {
    fhirbulk::Config c;
    c.set("base_url", ROOT + "/fhir").set("level", "group").set("group_id", "g1");
    c.add("types", "Patient").add("types", "Observation").set("poll_min_ms", 50);
    c.set("validate_json", true);
    try {
        c.set("concurency", 4);
        CHECK(!"an unknown key must throw");
    } catch (const fhirbulk::Error &err) {
        CHECK(err.code() == FHIRBULK_ERR_CONFIG);
        CHECK(std::string(err.what()) ==
              "invalid config: unknown key `concurency` (did you mean `concurrency`?)");
    }
    fhirbulk::Config moved(std::move(c));
    fhirbulk::Export e(moved);
    CHECK(drain(e) == TOTAL);
}

// Save mode: a document per attachment that fetches fine, its bytes in r.content, right before
// the record that links it; an error record for each one that does not.
static void test_attachments() {
    if (DOCS < 0) {
        std::printf("    (skipped: no attachment truth given)\n");
        return;
    }
    fhirbulk::Config c;
    c.set("base_url", ROOT + "/x/polls=0/fhir").set("level", "group").set("group_id", "g1");
    c.add("types", "DocumentReference").add("types", "DiagnosticReport");
    c.set("attachments", "save").set("attachment_max_bytes", 1000000);
    c.set("retry_max_attempts", 2).set("retry_backoff_min_ms", 10).set("retry_backoff_max_ms", 20);
    fhirbulk::Export e(c);
    long docs = 0, errors = 0, outputs = 0, before = 0;
    std::uint64_t doc_bytes = 0;
    // Per file: the line the documents since its last record name (0: none). Batches of files
    // downloading at once interleave; within a file, documents come right before their record.
    std::map<std::uint32_t, std::uint64_t> linked;
    for (fhirbulk::Record r : e) {
        std::uint64_t &pending = linked[r.file_index];
        switch (r.kind) {
        case fhirbulk::Kind::attachment: {
            docs++;
            CHECK(!r.content.empty());
            CHECK(r.content_data() == reinterpret_cast<const std::uint8_t *>(r.content.data()));
            CHECK(r.content_size() == r.content.size());
            // The description names the document's size and the file it goes to.
            CHECK(detail_field(r.json, "size") == std::to_string(r.content.size()));
            CHECK(contains(std::string(r.json), "\"file\":\"attachments/"));
            // Touch every byte through the unsigned view (ASan checks it is readable).
            const std::uint8_t *bytes = r.content_data();
            std::uint64_t nonzero = 0;
            for (std::size_t i = 0; i < r.content_size(); ++i) nonzero += bytes[i] != 0;
            CHECK(nonzero > 0);
            doc_bytes += r.content_size();
            CHECK(pending == 0 || pending == r.line);
            pending = r.line;
            before++;
            break;
        }
        case fhirbulk::Kind::error:
            errors++;
            CHECK(r.content.empty() && r.content_data() == nullptr);
            CHECK(contains(std::string(r.json), "attachment-error"));
            CHECK(pending == 0 || pending == r.line);
            pending = r.line;
            before++;
            break;
        case fhirbulk::Kind::output:
            outputs++;
            CHECK(r.content.empty() && r.content_size() == 0);
            CHECK(pending == 0 || pending == r.line);  // the record the documents came before
            pending = 0;
            break;
        case fhirbulk::Kind::deleted:
            CHECK(!"no deleted records here");
            break;
        }
    }
    std::printf("    %ld documents (%llu bytes), %ld attachment errors, %ld records\n", docs,
                (unsigned long long)doc_bytes, errors, outputs);
    CHECK(docs == DOCS);
    CHECK(errors == DOC_ERRORS);
    for (const auto &[file, line] : linked) CHECK(line == 0);  // none without its record
    CHECK(before == docs + errors);
    fhirbulk::Progress p = e.poll();
    CHECK(p.state == FHIRBULK_STATE_DONE);
    CHECK(p.attachments_fetched == static_cast<std::uint64_t>(DOCS));
    CHECK(p.attachment_errors == static_cast<std::uint64_t>(DOC_ERRORS));
}

int main(int argc, char **argv) {
    if (argc != 3 && argc != 5) {
        std::fprintf(stderr, "usage: %s ROOT TOTAL [DOCS DOC_ERRORS]\n", argv[0]);
        return 2;
    }
    ROOT = argv[1];
    TOTAL = std::atol(argv[2]);
    if (argc == 5) {
        DOCS = std::atol(argv[3]);
        DOC_ERRORS = std::atol(argv[4]);
    }
    struct {
        const char *name;
        void (*fn)();
    } tests[] = {
        {"basics", test_basics},
        {"config errors", test_config_errors},
        {"HTTP 404: Error code, http_status, url, json", test_not_found},
        {"full export over range-for", test_full_export},
        {"move construction and assignment", test_move},
        {"early break: the destructor cancels", test_early_break},
        {"cancel() from another thread", test_cancel_from_another_thread},
        {"checkpoint mid-batch, then resume", test_checkpoint_resume},
        {"events: kickoff first, a file_completed per file, completed last", test_events},
        {"Config: set/add, errors naming the key, an export from it", test_config_object},
        {"attachments (save): documents with their bytes, errors, counters", test_attachments},
    };
    for (auto &t : tests) {
        int before = failures;
        try {
            t.fn();
        } catch (const std::exception &e) {
            std::fprintf(stderr, "unexpected exception: %s\n", e.what());
            failures++;
        }
        std::printf("%s %s\n", failures == before ? "ok  " : "FAIL", t.name);
    }
    return failures == 0 ? 0 : 1;
}

// Tests of include/fhirbulk.hpp against a sandbox server (run by tests/packaging/run.sh, built
// with -fsanitize=address,undefined against the installed library).
//
//   test_wrapper ROOT TOTAL
//     ROOT   the sandbox, http://127.0.0.1:PORT (started with --records-per-file 7)
//     TOTAL  records Group g1 has of Patient + Observation (from /_sandbox/truth)
#include <fhirbulk.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
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

int main(int argc, char **argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: %s ROOT TOTAL\n", argv[0]);
        return 2;
    }
    ROOT = argv[1];
    TOTAL = std::atol(argv[2]);
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

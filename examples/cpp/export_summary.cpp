// export_summary (C++17): run a FHIR Bulk Data export with fhirbulk.hpp and print the records
// per resource type.
//
//   usage: export_summary BASE_URL [GROUP_ID|-] [TYPES]
//
//     BASE_URL  FHIR server base, e.g. http://127.0.0.1:8080/fhir
//     GROUP_ID  export one Group (Group/[id]/$export); omit or "-" for a system-level export
//     TYPES     comma-separated resource types (_type), e.g. Patient,Observation
//
//   build:  cmake -S examples/cpp -B build -DCMAKE_PREFIX_PATH=/where/fhirbulk/is/installed
//           cmake --build build && build/export_summary http://127.0.0.1:8080/fhir g1
//
// On failure it prints the error (code, HTTP status, URL, JSON detail) and exits 1.
// Copy it freely: it uses only the public fhirbulk.hpp.
#include <fhirbulk.hpp>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <string_view>
#include <utility>

namespace {

std::string build_config(const std::string &base_url, const std::string &group,
                         std::string_view types) {
    std::string cfg = "{\"base_url\": " + fhirbulk::json_quote(base_url);
    if (group.empty() || group == "-") {
        cfg += ", \"level\": \"system\"";
    } else {
        cfg += ", \"level\": \"group\", \"group_id\": " + fhirbulk::json_quote(group);
    }
    if (!types.empty()) {
        cfg += ", \"types\": [";
        for (std::size_t start = 0; start <= types.size();) {
            std::size_t end = types.find(',', start);
            if (end == std::string_view::npos) end = types.size();
            if (end > start) {
                if (cfg.back() != '[') cfg += ", ";
                cfg += fhirbulk::json_quote(types.substr(start, end - start));
            }
            start = end + 1;
        }
        cfg += "]";
    }
    return cfg + ", \"poll_min_ms\": 100, \"poll_max_ms\": 2000}";
}

const char *kind_name(fhirbulk::Kind k) {
    switch (k) {
    case fhirbulk::Kind::output: return "output";
    case fhirbulk::Kind::error: return "error";
    case fhirbulk::Kind::deleted: return "deleted";
    case fhirbulk::Kind::attachment: return "attachment";
    }
    return "?";
}

}  // namespace

int main(int argc, char **argv) {
    if (argc < 2 || argc > 4 || std::string_view(argv[1]) == "-h" ||
        std::string_view(argv[1]) == "--help") {
        std::fprintf(stderr, "usage: %s BASE_URL [GROUP_ID|-] [TYPES]\n", argv[0]);
        return 2;
    }
    const std::string base_url = argv[1];
    const std::string group = argc > 2 ? argv[2] : "-";
    const std::string_view types = argc > 3 ? argv[3] : "";

    std::printf("fhirbulk %s (C++): exporting %s%s from %s\n", fhirbulk::version(),
                group == "-" ? "system" : "Group/", group == "-" ? "" : group.c_str(),
                base_url.c_str());
    auto t0 = std::chrono::steady_clock::now();
    // (kind, resource type) -> records, bytes
    std::map<std::pair<std::string, std::string>, std::pair<std::uint64_t, std::uint64_t>> counts;
    std::uint64_t total = 0, bytes = 0;
    try {
        fhirbulk::Export exp(build_config(base_url, group, types));
        for (fhirbulk::Record r : exp) {
            // r.json and r.resource_type are views, valid until the next iteration.
            auto &c = counts[{kind_name(r.kind), std::string(r.resource_type)}];
            c.first++;
            c.second += r.json.size();
            total++;
            bytes += r.json.size();
        }
        fhirbulk::Progress p = exp.poll();
        double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

        std::printf("\n%-24s %-8s %12s %14s\n", "resource type", "kind", "records", "bytes");
        for (const auto &[key, c] : counts) {
            std::printf("%-24s %-8s %12llu %14llu\n", key.second.c_str(), key.first.c_str(),
                        (unsigned long long)c.first, (unsigned long long)c.second);
        }
        std::printf("%-24s %-8s %12llu %14llu\n", "total", "", (unsigned long long)total,
                    (unsigned long long)bytes);
        std::printf("\n%u files, %u status polls, %.2f s\n", p.files_total, p.polls, secs);
    } catch (const fhirbulk::Error &e) {
        std::fprintf(stderr, "export failed (%s, status %d", e.name(), (int)e.code());
        if (e.http_status() != 0) std::fprintf(stderr, ", HTTP %u", e.http_status());
        std::fprintf(stderr, "): %s\n", e.what());
        if (!e.json().empty()) std::fprintf(stderr, "detail: %s\n", e.json().c_str());
        return 1;
    }
    return 0;
}

// What the calling thread has cost the machine so far (Linux getrusage(RUSAGE_THREAD)): CPU time, page faults and
// context switches. The difference of two snapshots tells a stretch of host time spent computing (CPU time near the
// wall time) from one spent waiting (blocked in a call, or off the CPU: voluntary or involuntary switches).
#pragma once

#include <sys/resource.h>

#include <cstdint>

namespace dsmil {

struct ThreadUsage {
  double cpu_seconds = 0.0;  // user + system
  int64_t minor_faults = 0, major_faults = 0;
  int64_t voluntary_switches = 0, involuntary_switches = 0;

  // The calling thread's totals now (zeros where the system cannot say).
  static ThreadUsage now() {
    rusage usage{};
    if (getrusage(RUSAGE_THREAD, &usage) != 0) return {};
    const auto seconds = [](const timeval& t) { return static_cast<double>(t.tv_sec) + t.tv_usec * 1e-6; };
    return {seconds(usage.ru_utime) + seconds(usage.ru_stime), usage.ru_minflt, usage.ru_majflt, usage.ru_nvcsw,
            usage.ru_nivcsw};
  }

  ThreadUsage& operator+=(const ThreadUsage& o) {
    cpu_seconds += o.cpu_seconds;
    minor_faults += o.minor_faults;
    major_faults += o.major_faults;
    voluntary_switches += o.voluntary_switches;
    involuntary_switches += o.involuntary_switches;
    return *this;
  }
  friend ThreadUsage operator-(ThreadUsage a, const ThreadUsage& b) {
    return {a.cpu_seconds - b.cpu_seconds, a.minor_faults - b.minor_faults, a.major_faults - b.major_faults,
            a.voluntary_switches - b.voluntary_switches, a.involuntary_switches - b.involuntary_switches};
  }
};

}  // namespace dsmil

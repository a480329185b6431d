// Work split between the calling thread and one task on XLA's intra-op thread pool.
#ifndef JCNN_NATIVE_PARALLEL_H_
#define JCNN_NATIVE_PARALLEL_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace jcnn {

// Calls body(i) once for each i in [0, count), from the calling thread and, when
// `use_pool`, one task scheduled on the pool. The caller waits only for items a task has
// already claimed, never for a task to start: the pool may be busy with other operations,
// and a task that starts after the work is done claims nothing and returns.
// `Pool` is xla::ffi::ThreadPool, or anything else with Schedule(std::function<void()>).
template <typename Pool>
void ParallelFor(Pool& pool, int64_t count, bool use_pool,
                        const std::function<void(int64_t)>& body) {
  struct Progress {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> busy{0};
  };
  auto progress = std::make_shared<Progress>();
  // The task gets `body` by pointer: it calls it only for an item it claimed, which the
  // caller waits for, so `body` is still alive whenever it is called.
  auto work = [progress, count](const std::function<void(int64_t)>* body) {
    for (;;) {
      progress->busy.fetch_add(1);
      const int64_t i = progress->next.fetch_add(1);
      if (i >= count) {
        progress->busy.fetch_sub(1);
        return;
      }
      (*body)(i);
      progress->busy.fetch_sub(1);
    }
  };
  const auto* body_pointer = &body;
  if (use_pool && count > 1) pool.Schedule([work, body_pointer] { work(body_pointer); });
  work(&body);
  while (progress->busy.load() != 0) std::this_thread::yield();
}

}  // namespace jcnn

#endif  // JCNN_NATIVE_PARALLEL_H_

/* For `make test-dates` only (scripts/test-dates.sh preloads it after libfaketime).
 *
 * libfaketime (0.9.10, Debian 12) moves CLOCK_MONOTONIC along with the wall clock and converts the
 * deadlines of the waits it knows (clock_nanosleep, pthread_cond_timedwait), but not of
 * sem_clockwait / pthread_cond_clockwait. Python's timed waits (Lock.acquire(timeout),
 * Condition.wait(timeout), queue.get(timeout)) use sem_clockwait(CLOCK_MONOTONIC, deadline) with a
 * deadline read from the faked clock, which the kernel reaches only after the whole offset: the wait
 * never times out (the Stripe simulator's webhook retries stalled so). These two wrappers turn the
 * faked deadline into the same distance on the kernel's clock. (FAKETIME_DONT_FAKE_MONOTONIC=1 is
 * no way out: libfaketime then breaks time.sleep's absolute clock_nanosleep with EINVAL.)
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <semaphore.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* abstime on libfaketime's (faked) clock -> the same instant on the kernel's clock */
static struct timespec to_kernel(clockid_t clock, const struct timespec *abstime) {
  struct timespec faked, real, out;
  clock_gettime(clock, &faked);                  /* libfaketime's answer */
  syscall(SYS_clock_gettime, clock, &real);      /* the kernel's */
  long long ns = (abstime->tv_sec - faked.tv_sec) * 1000000000LL + (abstime->tv_nsec - faked.tv_nsec);
  if (ns < 0) ns = 0;
  ns += real.tv_nsec;
  out.tv_sec = real.tv_sec + ns / 1000000000LL;
  out.tv_nsec = ns % 1000000000LL;
  return out;
}

int sem_clockwait(sem_t *sem, clockid_t clock, const struct timespec *abstime) {
  static int (*next)(sem_t *, clockid_t, const struct timespec *);
  if (!next) next = dlsym(RTLD_NEXT, "sem_clockwait");
  struct timespec k = to_kernel(clock, abstime);
  return next(sem, clock, &k);
}

int pthread_cond_clockwait(pthread_cond_t *cond, pthread_mutex_t *mutex, clockid_t clock,
                           const struct timespec *abstime) {
  static int (*next)(pthread_cond_t *, pthread_mutex_t *, clockid_t, const struct timespec *);
  if (!next) next = dlsym(RTLD_NEXT, "pthread_cond_clockwait");
  struct timespec k = to_kernel(clock, abstime);
  return next(cond, mutex, clock, &k);
}

/* What the test programs (scenario.c, scenario_share.c) share: sizes and the check that fails a case. */
#ifndef VGPU_TEST_SCENARIO_H
#define VGPU_TEST_SCENARIO_H

#include <stdio.h>
#include <stdlib.h>

#define MiB (1024ull * 1024ull)
#define CHECK(cond, ...)                                                                                     \
    do {                                                                                                     \
        if (!(cond)) {                                                                                       \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                             \
            fprintf(stderr, __VA_ARGS__);                                                                    \
            fprintf(stderr, "\n");                                                                           \
            exit(1);                                                                                         \
        }                                                                                                    \
    } while (0)

#endif

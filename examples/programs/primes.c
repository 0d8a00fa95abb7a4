/* Count the primes below min(N, 100001) with a sieve. */
#include <stdio.h>
#include <stdlib.h>
int main(void) {
    long n;
    if (scanf("%ld", &n) != 1) return 1;
    if (n > 100001) n = 100001;
    char *s = calloc(n, 1);
    long count = 0;
    for (long i = 2; i < n; i++) {
        if (s[i]) continue;
        count++;
        for (long j = i * i; j < n; j += i) s[j] = 1;
    }
    printf("%ld\n", count);
    free(s);
    return 0;
}

// Count the primes below min(N, 100001) with a sieve.
#include <iostream>
#include <vector>
int main() {
    long n;
    std::cin >> n;
    if (n > 100001) n = 100001;
    std::vector<bool> composite(n);
    long count = 0;
    for (long i = 2; i < n; i++) {
        if (composite[i]) continue;
        count++;
        for (long j = i * i; j < n; j += i) composite[j] = true;
    }
    std::cout << count << "\n";
}

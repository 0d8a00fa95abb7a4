// Count the primes below min(N, 100001) with a sieve. Java programs declare `public class Main`.
import java.util.Scanner;

public class Main {
    public static void main(String[] args) {
        long n = Math.min(new Scanner(System.in).nextLong(), 100001);
        boolean[] composite = new boolean[(int) n];
        long count = 0;
        for (int i = 2; i < n; i++) {
            if (composite[i]) continue;
            count++;
            for (long j = (long) i * i; j < n; j += i) composite[(int) j] = true;
        }
        System.out.println(count);
    }
}

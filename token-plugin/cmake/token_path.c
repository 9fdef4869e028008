/* Configure-time probe: print the directory this libcryptsetup loads external token handlers from. */
#include <libcryptsetup.h>
#include <stdio.h>

int main(void)
{
	const char *path = crypt_token_external_path();
	if (path)
		puts(path);
	return 0;
}

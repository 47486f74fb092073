import remotior_sensus

rs = remotior_sensus.Session(n_processes=2, available_ram=1000)
catalog = rs.bandset_catalog()
catalog.create_bandset(["$DATA/lc/classes.tif", "$DATA/lc/classes2.tif"], bandset_number=1)
output = rs.band_sieve(
    input_bands=1, size=4, output_path="$DATA/out/bandset_files_sieve", prefix="sieve_"
)
print(output.check)
print(output.paths)
rs.close()

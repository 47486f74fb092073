import remotior_sensus

rs = remotior_sensus.Session(n_processes=2, available_ram=1000)
file_list = ["$DATA/lc/classes.tif", "$DATA/lc/classes2.tif"]
bandset = rs.bandset.create(
    file_list,
    band_names=["first", "second"],
    multiplicative_factors=[1, 2],
    additive_factors=[0, 5],
)
output = rs.band_sieve(
    input_bands=bandset,
    size=4,
    output_path="$DATA/out/detached_bandset_files_sieve",
    prefix="sieve_",
)
print(output.check)
print(output.paths)
print(bandset.get_band_count())
print(bandset.get_paths())
print(bandset.get_band_attributes("multiplicative_factor"))
print(bandset.get_band_attributes("additive_factor"))
rs.close()

import remotior_sensus

rs = remotior_sensus.Session(n_processes=2, available_ram=1000)
catalog = rs.bandset_catalog()
catalog.create_bandset(["$DATA/lc", "classes2"], bandset_number=1)
output = rs.band_erosion(
    input_bands=catalog.get_bandset(1),
    value_list=[7],
    size=1,
    output_path="$DATA/out/bandset_folder_erosion",
    prefix="erosion_",
)
print(output.check)
print(output.paths)
rs.close()
